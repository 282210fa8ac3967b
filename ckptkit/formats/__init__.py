"""Built-in checkpoint formats, one module each; :mod:`ckptkit.registry` lists them."""
