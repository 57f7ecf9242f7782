"""jaxalign: align language models from feedback, in JAX.

    import jaxalign
    lm = jaxalign.load("hf-or-jaxalign-dir", mesh="dp:1,fsdp:-1,tp:1")
"""

__version__ = "0.1.0"
__all__ = ["LM", "init", "load"]


def __getattr__(name: str):
    # Lazy, so `jaxalign --help` and config parsing do not pay for importing JAX.
    if name in __all__:
        from jaxalign import api

        return getattr(api, name)
    raise AttributeError(f"module 'jaxalign' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])  # the lazy names too, for tab completion
