"""Names of the graph inputs and outputs graphlens adds (part of the bundle format)."""

PATCH_SUFFIXES = ("patch", "patch_mask", "add")


def input_name(hook: str, kind: str) -> str:
    """``input_name("blocks.0.hook_resid_pre", "patch")`` → ``"blocks.0.hook_resid_pre.patch"``."""
    assert kind in PATCH_SUFFIXES, kind
    return f"{hook}.{kind}"


def is_substitution_input(name: str) -> bool:
    """Whether graph input ``name`` is a site's ``.patch`` / ``.patch_mask`` / ``.add``."""
    return name.rsplit(".", 1)[-1] in PATCH_SUFFIXES
