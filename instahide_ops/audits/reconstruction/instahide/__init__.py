"""Reconstruction attacks on InstaHide encodings, and the stages they are made of.

Importing this package imports every module in it, so each module that defines an attack
(``@register_attack``) registers it: a new attack is one module here.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
