"""Sphinx configuration of the scoresde documentation (MyST markdown, executed tutorials, offline).

Build with ``nox -s docs`` (or ``python -m sphinx -W --keep-going -b html docs docs/_build/html``).
Everything needed at view time ships with the site: MathJax comes from ``sphinx-mathjax-offline``,
the theme is furo; nothing is fetched from the network.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(ROOT))

from _gallery import write_gallery  # noqa: E402
from docutils import nodes  # noqa: E402
from sphinx.transforms import SphinxTransform  # noqa: E402

import scoresde  # noqa: E402

project = "scoresde"
author = "the scoresde developers"
copyright = "2026, the scoresde developers"
release = scoresde.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static/mathjax; sets mathjax_path
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints", "README*"]
templates_path: list[str] = []

# -- MyST ---------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# -- executed tutorials (myst-nb) -----------------------------------------------------------
# "cache" executes a notebook only when its code changed since the last build (jupyter-cache in
# docs/_build/.jupyter_cache, keyed on the code cells); SCORESDE_DOCS_EXECUTE=force re-runs every one.
nb_execution_mode = os.environ.get("SCORESDE_DOCS_EXECUTE", "cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_merge_streams = True
nb_output_stderr = "warn"  # anything a tutorial prints to stderr fails the -W build

# -- autodoc / napoleon ---------------------------------------------------------------------
autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autoclass_content = "class"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True

# -- viewcode -------------------------------------------------------------------------------
# Names defined in a private module and documented where a public module re-exports them (OutputDirError,
# DivergenceError) get no [source] link: viewcode keys a source page's back-links by the first public module
# that documented any of its objects, so it would point at anchors that do not exist.
viewcode_follow_imported_members = False

# -- HTML -----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"scoresde {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]  # scrollable wide tables and outputs
html_show_sourcelink = False
html_last_updated_fmt = None

# -- references -----------------------------------------------------------------------------
# Public names are documented where they are defined (``scoresde.sde.VPSDE``); the package
# re-exports them (``scoresde.VPSDE``). Resolve references to the re-exported spelling to the
# defining module, and turn any reference to a ``scoresde.*`` name that still does not resolve
# into a warning (so -W catches theory pages that point at functions that do not exist).
_PUBLIC_MODULES = sorted(
    m.name.removeprefix("scoresde.")
    for m in pkgutil.walk_packages(scoresde.__path__, prefix="scoresde.")
    if not any(part.startswith("_") for part in m.name.split(".")) and m.name != "scoresde.cli"
)


def _defining_path(target: str) -> str | None:
    """``scoresde.X.rest`` -> ``scoresde.<module>.X.rest`` where ``X`` is defined; None if unknown.

    A class or function is documented in the module that defines it (its ``__module__``); other
    objects (registries, constants) in the first public module whose ``__all__`` lists them."""
    parts = target.split(".")
    if len(parts) < 2 or parts[0] != "scoresde":
        return None
    name, rest = parts[1], parts[2:]
    if name in _PUBLIC_MODULES or not hasattr(scoresde, name):
        return None
    obj = getattr(scoresde, name)
    home = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isfunction(obj)) and isinstance(home, str) and home.startswith("scoresde."):
        if home.removeprefix("scoresde.") in _PUBLIC_MODULES:
            return ".".join([home, getattr(obj, "__qualname__", name), *rest])
    for modname in _PUBLIC_MODULES:
        mod = importlib.import_module(f"scoresde.{modname}")
        if name in getattr(mod, "__all__", ()) and getattr(mod, name, None) is obj:
            return ".".join(["scoresde", modname, name, *rest])
    return None


def _resolve_reexports(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    canonical = _defining_path(target)
    if canonical is not None:
        domain = env.get_domain("py")
        new = node.deepcopy()
        new["reftarget"] = canonical
        found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], canonical, new, contnode)
        if found is not None:
            return found
    if target.startswith("scoresde.") and _is_public(canonical or target):
        from sphinx.util import logging

        logging.getLogger(__name__).warning(f"unresolved reference to {target!r}", location=node)
    return None


def _is_public(path: str) -> bool:
    """True for a name that should be documented: it exists and is public (in its module's ``__all__``),
    or it does not exist at all (a typo). Private helpers (``FixedStepSampler``, ``CountedScore``) that
    appear in signatures and base-class lists are not documented and not warned about."""
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            mod = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        obj = mod
        for name in parts[i:]:
            if not hasattr(obj, name):
                return True  # no such object: a broken reference
            obj = getattr(obj, name)
        if not (inspect.isclass(obj) or inspect.ismodule(obj) or callable(obj)):
            return False  # module data (registries like GRIDS) is documented only when it has a doc comment
        if any(p.startswith("_") for p in parts):  # private modules and names are not documented
            return False
        return parts[i] in getattr(mod, "__all__", ())
    return True


class _ImplicitDocstringSections(SphinxTransform):
    """Section titles inside docstrings ("Conventions", "Notes") are not cross-document labels.

    MyST's ``eval-rst`` blocks register them as explicit names, so two module docstrings with a
    "Conventions" section would clash ("duplicate label"). Names equal to their own section title are
    made implicit; explicit labels (``(name)=``) that differ from the title are left alone.
    """

    default_priority = 840  # before SphinxDomains (850), which registers labels

    def apply(self, **kwargs):
        for name, explicit in list(self.document.nametypes.items()):
            node = self.document.ids.get(self.document.nameids.get(name) or "")
            if (
                explicit
                and isinstance(node, nodes.section)
                and node.children
                and isinstance(node[0], nodes.title)
                and nodes.fully_normalize_name(node[0].astext()) == name
            ):
                self.document.nametypes[name] = False


def _check_api_pages(app):
    """Every public module must have its page under api/ (so new modules are not silently left out)."""
    from sphinx.util import logging

    missing = [m for m in _PUBLIC_MODULES if not (DOCS / "api" / f"{m}.md").exists()]
    for m in missing:
        logging.getLogger(__name__).warning(f"public module scoresde.{m} has no page docs/api/{m}.md")


def _mpltype_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``:mpltype:`color``` in the docstrings matplotlib generates for ``Artist.set`` of a subclass (the
    figure classes of scoresde.plotting): shown as literal text (matplotlib's own role links into its docs)."""
    return [nodes.literal(rawtext, text)], []


def setup(app):
    app.add_role("mpltype", _mpltype_role)
    write_gallery(ROOT, DOCS / "gallery")
    __import__("_api_summary").write_api_summary(DOCS / "api" / "summary.inc")  # table atop api/index.md
    app.add_transform(_ImplicitDocstringSections)
    app.connect("builder-inited", _check_api_pages)
    app.connect("missing-reference", _resolve_reexports)
