"""Image transforms, one subpackage per family."""
