"""InstaHide (Huang et al., ICML 2020): mixing with one-time keys over a public pool."""
