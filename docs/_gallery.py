"""Generate the gallery pages from whatever the studies have written to ``studies/output/<study>/``.

Called by ``docs/conf.py`` at the start of every build. Writes ``docs/gallery/`` (git-ignored):
``index.md`` and, for every study with outputs, ``<study>.md`` plus copies of its figures
(PNG shown, SVG and CSV offered as downloads). The study order is the one of ``STUDIES`` in
``noxfile.py`` (read with ``ast``, so nox need not be installed), then any other output folder.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

#: images shown on a study's page, in this order; other PNGs follow alphabetically
PREFERRED_IMAGES = ("figure.png", "samples.png", "trajectory.png")
DOWNLOAD_SUFFIXES = (".svg", ".csv")


def study_names(root: Path) -> list[str]:
    """``STUDIES`` from ``noxfile.py`` (empty if it cannot be read)."""
    try:
        tree = ast.parse((root / "noxfile.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return []
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "STUDIES" for t in targets) and node.value is not None:
            try:
                return [str(s) for s in ast.literal_eval(node.value)]
            except ValueError:
                return []
    return []


def study_module(root: Path, name: str) -> str | None:
    """The ``studies`` module that wrote ``studies/output/<name>``: ``name`` itself, or the longest module
    name that ``name`` extends with ``_...`` (e.g. ``accuracy_cost_full`` written with ``--out``)."""
    modules = sorted(
        (p.stem for p in (root / "studies").glob("*.py") if not p.stem.startswith("_")), key=len, reverse=True
    )
    for mod in modules:
        if name == mod or name.startswith(mod + "_"):
            return mod
    return None


def study_summary(root: Path, name: str) -> str:
    """First paragraph of the study module's docstring, on one line (empty if none)."""
    mod = study_module(root, name)
    if mod is None:
        return ""
    path = root / "studies" / f"{mod}.py"
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    except (OSError, SyntaxError):
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


#: what each size of a study means, for the note on its page
SIZE_NOTES = {
    "docs": "the documentation build's small size (`--docs`: fewer samples, seeds and NFE levels, short training "
    "runs), so the numbers are noisier and the trained models weaker than at the default size; "
    "`nox -s gallery` rebuilds these pages from default-size runs",
    "default": "the study's default size",
    "full": "the study's full size (`--full`)",
}


def run_provenance(folder: Path, module: str | None) -> dict[str, str]:
    """The provenance attributes (``size``, ``command``, ``created``, ...) of the study's Dataset in ``folder``:
    ``<module>.nc`` if present, else the first ``*.nc`` alphabetically; empty when there is none or it cannot
    be read."""
    files = sorted(folder.glob("*.nc"))
    preferred = [f for f in files if module is not None and f.stem == module]
    for path in preferred + [f for f in files if f not in preferred]:
        try:
            import xarray as xr

            with xr.open_dataset(path) as ds:
                return {k: str(v) for k, v in ds.attrs.items()}
        except (OSError, ValueError, ImportError):  # no netCDF backend, or a corrupt file: no size note
            continue
    return {}


def size_note(attrs: dict[str, str]) -> str:
    """One sentence naming the size and the command that produced a study's outputs (empty if unknown)."""
    size = attrs.get("size")
    if not size:
        return ""
    what = SIZE_NOTES.get(size, f"size `{size}`")
    when = attrs.get("created", "")
    took = attrs.get("study_wall_time_s")
    parts = [f"Produced at **{size}** size, {what}"]
    if "command" in attrs:
        parts.append(f" — `{attrs['command']}`")
    if when or took:
        detail = ", ".join(x for x in (when, f"{float(took):.0f} s" if took else "") if x)
        parts.append(f" ({detail})")
    return "".join(parts) + "."


def _images(folder: Path) -> list[Path]:
    pngs = {p.name: p for p in folder.glob("*.png")}
    ordered = [pngs.pop(n) for n in PREFERRED_IMAGES if n in pngs]
    return ordered + [pngs[n] for n in sorted(pngs)]


_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def demote_headings(markdown: str) -> str:
    """Fit a study's ``table.md`` under the page title: first heading -> H2, every later one -> a bold
    paragraph (table captions are often long sentences; as headings they would crowd the page's
    contents). Headings inside fenced code blocks are left alone.
    """
    out, first, fenced = [], True, False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            line = f"## {m.group(2)}" if first else f"**{m.group(2).strip()}**"
            first = False
        out.append(line)
    return "\n".join(out) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _copy_if_changed(src: Path, dst: Path) -> None:
    if not dst.exists() or dst.stat().st_size != src.stat().st_size or dst.stat().st_mtime < src.stat().st_mtime:
        shutil.copy2(src, dst)


def study_page(root: Path, name: str, folder: Path, out: Path) -> str:
    """Copy one study's files into ``out/<name>/`` and return the page's markdown."""
    files = out / name
    files.mkdir(parents=True, exist_ok=True)
    keep = set()
    lines = [f"# {name}", ""]
    summary = study_summary(root, name)
    if summary:
        lines += [summary, ""]
    mod = study_module(root, name)
    attrs = run_provenance(folder, mod)
    note = size_note(attrs)
    if note:
        opening = "```{note}" if attrs.get("size") == "docs" else "```{admonition} Run size"
        lines += [opening, note, "```", ""]
    if mod == name:
        lines += [f"Reproduce with `python -m studies.{name}` (outputs in `studies/output/{name}/`).", ""]
    elif mod is not None:
        lines += [
            f"Written by `python -m studies.{mod}` with non-default options into `studies/output/{name}/`"
            " (the table below records the command when the study prints it).",
            "",
        ]
    for img in _images(folder):
        _copy_if_changed(img, files / img.name)
        keep.add(img.name)
        lines += [f"```{{figure}} {name}/{img.name}", f":alt: {name}: {img.stem}", ":width: 100%", "", "```", ""]
    table = folder / "table.md"
    if table.exists():
        lines.append(demote_headings(table.read_text(encoding="utf-8")))
    downloads = sorted(p for p in folder.iterdir() if p.suffix in DOWNLOAD_SUFFIXES and p.is_file())
    if downloads:
        lines += ["## Files", ""]
        for p in downloads:
            _copy_if_changed(p, files / p.name)
            keep.add(p.name)
            lines.append(f"- {{download}}`{p.name} <{name}/{p.name}>`")
        lines.append("")
    for stale in files.iterdir():
        if stale.name not in keep:
            stale.unlink()
    return "\n".join(lines)


def write_gallery(root: Path, out: Path) -> list[str]:
    """Write the gallery for every ``studies/output/<study>/`` with a figure or a table; return the studies."""
    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    output = root / "studies" / "output"
    listed = study_names(root)
    present = sorted(p.name for p in output.iterdir() if p.is_dir()) if output.is_dir() else []
    names = [n for n in listed if n in present] + [n for n in present if n not in listed]
    shown = []
    for name in names:
        folder = output / name
        if not (list(folder.glob("*.png")) or (folder / "table.md").exists()):
            continue
        _write_if_changed(out / f"{name}.md", study_page(root, name, folder, out))
        shown.append(name)
    missing = [n for n in listed if n not in shown]

    index = [
        "# Gallery of studies",
        "",
        "Figures and tables written by the numerical studies in `studies/`, collected at build time from",
        "`studies/output/<study>/`. `nox -s docs` first runs every study whose output is missing, at the",
        "small documentation size (`--docs`); `nox -s gallery` reruns them all at their default size. Each",
        "page names the size and the command that produced it.",
        "",
    ]
    if shown:
        index += ["```{toctree}", ":hidden:", ":maxdepth: 1", "", *shown, "```", ""]
        for name in shown:
            index += [f"## {name}", ""]
            summary = study_summary(root, name)
            if summary:
                index += [summary, ""]
            size = run_provenance(output / name, study_module(root, name)).get("size")
            if size:
                index += [f"Run size: {size}.", ""]
            imgs = _images(output / name)
            if imgs:
                index += [
                    f"```{{image}} {name}/{imgs[0].name}",
                    f":alt: {name}",
                    ":width: 60%",
                    f":target: {name}.html",
                    "```",
                    "",
                ]
            index += [f"Details: {{doc}}`{name}`.", ""]
    else:
        index += ["No study outputs were found when these pages were built.", ""]
    if missing:
        index += [
            "```{note}",
            "Not built into this copy (no outputs in `studies/output/`): " + ", ".join(f"`{n}`" for n in missing) + ".",
            "```",
            "",
        ]
    _write_if_changed(out / "index.md", "\n".join(index))
    for stale in out.glob("*.md"):
        if stale.stem != "index" and stale.stem not in shown:
            stale.unlink()
    for stale in out.iterdir():
        if stale.is_dir() and stale.name not in shown:
            shutil.rmtree(stale)
    return shown
