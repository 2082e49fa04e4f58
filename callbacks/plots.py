"""Pictures people would rather look at than read: variance through depth, and learned activation curves.

Rendered off-screen with matplotlib's Agg canvas (no pyplot, no global state) into ``[H, W, 3]``
uint8 arrays that any image-capable logger accepts. matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _log10(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log10(values.astype(np.float64))
    out[~np.isfinite(out)] = np.nan
    return out


def short_names(names: Sequence[str]) -> tuple[list[str], str]:
    """Drop the dotted prefix and suffix all names share: ``model.h.0.mlp.act``, ``model.h.1.mlp.act`` ->
    (``["0", "1"]``, ``"model.h.*.mlp.act"``). Names are returned unchanged (and ``"*"``) when nothing is shared."""
    parts = [name.split(".") for name in names]
    if len(parts) < 2:
        return list(names), "*"
    shortest = min(len(p) for p in parts)
    head = 0
    while head < shortest - 1 and len({p[head] for p in parts}) == 1:
        head += 1
    tail = 0
    while tail < shortest - head - 1 and len({p[-1 - tail] for p in parts}) == 1:
        tail += 1
    short = [".".join(p[head : len(p) - tail]) for p in parts]
    if len(set(short)) < len(short):
        return list(names), "*"
    pattern = ".".join(parts[0][:head] + ["*"] + (parts[0][len(parts[0]) - tail :] if tail else []))
    return short, pattern


ELLIPSIS = "\u2026"


def elide(name: str, max_chars: int = 40) -> str:
    """``name`` if short enough, else shortened in the middle: whole dotted parts are dropped (an ellipsis
    marks each gap), the longest first, never the first part, the last two (the layer and its parameter) or a
    number (a block index); if that is not enough, characters are cut from the middle.
    ``model.encoder.layer.0.attention.output.LayerNorm.weight`` -> ``model\u2026layer.0\u2026output.LayerNorm.weight``."""
    if len(name) <= max_chars:
        return name
    parts = name.split(".")
    keep = [True] * len(parts)

    def render() -> str:
        out = ""
        for i, (part, kept) in enumerate(zip(parts, keep)):
            if kept:
                out += ("" if not out else "." if keep[i - 1] else "") + part
            elif i == 0 or keep[i - 1]:
                out += ELLIPSIS
        return out

    middle = (len(parts) - 1) / 2
    removable = sorted(
        (i for i in range(1, len(parts) - 2) if not parts[i].isdigit()),
        key=lambda i: (-len(parts[i]), abs(i - middle)),
    )
    text = name
    for i in removable:
        keep[i] = False
        text = render()
        if len(text) <= max_chars:
            return text
    cut = max_chars - 1
    return text[: cut // 2] + ELLIPSIS + text[len(text) - (cut - cut // 2) :]


def layer_labels(names: Sequence[str], max_chars: int = 40) -> tuple[list[str], str]:
    """Readable, distinct labels for layer names: the dotted prefix every name shares is dropped (and
    returned, ``""`` if none; the last part of a name is always kept), then long names are elided in the
    middle (:func:`elide`), except those that would then look alike. ``model.encoder.layer.0.output.dense``, ``model.pooler.dense`` ->
    (``["encoder.layer.0.output.dense", "pooler.dense"]``, ``"model"``)."""
    parts = [name.split(".") for name in names]
    head = 0
    if len(parts) > 1:
        shortest = min(len(p) for p in parts)
        while head < shortest - 1 and len({p[head] for p in parts}) == 1:
            head += 1
    prefix = ".".join(parts[0][:head]) if parts and head else ""
    stripped = [".".join(p[head:]) for p in parts]
    labels = [elide(name, max_chars) for name in stripped]
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    labels = [label if counts[label] == 1 else name for label, name in zip(labels, stripped)]  # alike: unelided
    return labels, prefix


_KIND_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                "tab:olive", "tab:cyan", "tab:gray")  # fmt: skip
_KIND_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")


def kind_styles(kinds: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{kind: (colour, marker)}``, distinct for the first 100 kinds, in order of first appearance."""
    styles: dict[str, tuple[str, str]] = {}
    for kind in kinds:
        if kind not in styles:
            i = len(styles)
            styles[kind] = (_KIND_COLORS[i % 10], _KIND_MARKERS[(i + i // 10) % 10])
    return styles


def _text_width(fig, texts: Sequence[str], fontsize: float) -> float:
    """The widest of ``texts`` at ``fontsize``, in inches (measured by the Agg renderer, as drawn)."""
    from matplotlib.font_manager import FontProperties

    renderer, prop = fig.canvas.get_renderer(), FontProperties(size=fontsize)
    widths = (renderer.get_text_width_height_descent(t, prop, ismath=False)[0] for t in texts)
    return max(widths, default=0.0) / fig.dpi


def _depth_axes(fig, tick_labels: Sequence[str], fontsize: float, suptitle: bool):
    """The depth plot, the heat map and its colour bar, placed from the measured width of the layer labels
    (on both sides of the pair). A fixed layout: matplotlib's constrained layout gives the same picture but
    was half of its drawing time (it measures every artist several times)."""
    width, height = fig.get_size_inches()
    labels = _text_width(fig, tick_labels, fontsize) + 0.08
    left, right = 0.42 + labels, labels + 0.08 + 0.16 + 1.0  # y label + tick labels; tick labels + colour bar
    top, bottom, gap = 0.42 + (0.25 if suptitle else 0.0), 0.55, 0.12
    span = max(width - left - right - gap, 2.0)
    depth_w, heat_w = span / 2.3, span * 1.3 / 2.3
    box = lambda x, w: fig.add_axes((x / width, bottom / height, w / width, (height - top - bottom) / height))  # noqa: E731
    depth_ax = box(left, depth_w)
    heat_ax = box(left + depth_w + gap, heat_w)
    heat_ax.sharey(depth_ax)
    colorbar_ax = box(left + depth_w + gap + heat_w + labels + 0.08, 0.16)
    return depth_ax, heat_ax, colorbar_ax


MAX_LABELLED_LAYERS = 96  # beyond this, every k-th layer is labelled


def build_depth_figure(
    title: str, layer_names: Sequence[str], current: np.ndarray, steps: Sequence[int], history: np.ndarray, step: int,
    axis_label: str = "layer (forward order)", kinds: Sequence[str] | None = None,
):  # fmt: skip
    """The :func:`depth_figure` as a matplotlib ``Figure`` (for tests and callers who save it themselves)."""
    layer_names = list(layer_names)
    n = len(layer_names)
    kinds = list(kinds) if kinds is not None else [""] * n
    styles = kind_styles(kinds)
    labels, prefix = layer_labels(layer_names)
    current = np.asarray(current, dtype=np.float64)
    history = np.asarray(history, dtype=np.float64).reshape(n, len(steps))

    every = max(1, -(-n // MAX_LABELLED_LAYERS))
    fontsize = 8 if n <= 24 else 7 if n <= 48 else 6 if n <= 72 else 5
    shown = np.arange(n)[::every]
    height = float(np.clip(1.8 + 0.16 * min(n, MAX_LABELLED_LAYERS), 4.5, 18.0))
    fig = _figure(15, height)
    depth_ax, heat_ax, colorbar_ax = _depth_axes(fig, [labels[i] for i in shown], fontsize, suptitle=bool(prefix))
    depth = np.arange(n)

    finite = np.isfinite(current) & (current > 0)
    if finite.sum() > 1:
        depth_ax.plot(current[finite], depth[finite], "-", color="0.75", lw=1, zorder=1)
    for kind, (color, marker) in styles.items():
        chosen = finite & np.array([k == kind for k in kinds], dtype=bool)
        if chosen.any() or len(styles) > 1:
            depth_ax.scatter(current[chosen], depth[chosen], color=color, marker=marker, s=28, zorder=2,
                             label=kind or None)  # fmt: skip
    bad = ~np.isfinite(current)
    if bad.any():
        edge = np.nanmax(current[finite]) if finite.any() else 1.0
        depth_ax.scatter(np.full(bad.sum(), edge), depth[bad], color="red", marker="x", s=40, zorder=3,
                         label="non-finite")  # fmt: skip
    if finite.any():
        from matplotlib.ticker import NullLocator

        depth_ax.set_xscale("log")
        depth_ax.xaxis.set_minor_locator(NullLocator())  # unlabelled minor ticks: a tenth of the drawing time
    depth_ax.set_ylim(n - 0.5, -0.5)  # forward order top to bottom, the rows of the heat map
    quantity = title.replace("_", " ")  # "activation variance", "update ratio", ...
    depth_ax.set_xlabel(f"{quantity} (log scale)")
    depth_ax.set_ylabel(axis_label)
    depth_ax.set_title(f"{title} at step {step}")
    depth_ax.grid(True, which="major", alpha=0.3)
    if any(kinds) or bad.any():
        depth_ax.legend(title="kind", fontsize=7, title_fontsize=7, loc="best", ncols=1 if len(styles) <= 8 else 2)

    cmap = _colormap("viridis")
    image = heat_ax.imshow(_log10(history), aspect="auto", origin="upper", interpolation="nearest", cmap=cmap)
    colorbar = fig.colorbar(image, cax=colorbar_ax)
    colorbar.set_label(f"log10({quantity})")
    heat_ax.set_xlabel("step (blank: not logged, or non-finite)")
    heat_ax.set_title(f"{title}: log10, {axis_label.split(' ')[0]} x step")
    ticks = np.unique(np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).round().astype(int))
    heat_ax.set_xticks(ticks, [str(steps[t]) for t in ticks])

    depth_ax.set_yticks(shown, [labels[i] for i in shown], fontsize=fontsize)
    heat_ax.tick_params(axis="y", which="both", labelleft=False, labelright=True, left=False, right=True,
                        labelsize=fontsize)
    for ax in (depth_ax, heat_ax):
        for tick, i in zip(ax.get_yticklabels(), shown):
            tick.set_color(styles[kinds[i]][0] if any(kinds) else "black")
    if prefix:
        fig.suptitle(f"layer names without their common prefix '{prefix}.'", fontsize=9)
    return fig


def depth_figure(
    title: str, layer_names: Sequence[str], current: np.ndarray, steps: Sequence[int], history: np.ndarray, step: int,
    axis_label: str = "layer (forward order)", kinds: Sequence[str] | None = None,
) -> np.ndarray:  # fmt: skip
    """Left: the variance of every layer (log scale) against its depth at ``step``, one marker and colour per
    kind of layer (``kinds``, e.g. class names) with a legend. Right: a layer x step heat map of
    log10(variance) over the run (``history`` is ``[layers, len(steps)]``; non-finite cells stay blank) with
    its colour bar. Both share the depth axis, labelled with the layer names (the prefix they all share
    dropped, long ones elided in the middle, coloured by kind)."""
    return _to_rgb(build_depth_figure(title, layer_names, current, steps, history, step, axis_label, kinds))


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="white")


def curves_figure(
    layer_names: Sequence[str], x: np.ndarray, values: np.ndarray, derivatives: np.ndarray, step: int,
    value_bands: np.ndarray | None = None, derivative_bands: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """F(x) and F'(x) of every layer (``[layers, points]``), coloured by depth, GELU dashed for reference.
    ``*_bands`` (``[layers, 2, points]``, min and max over channels) shade per-channel activations."""
    import math

    from matplotlib import colormaps

    fig = _figure(12, 4.5)
    value_ax, deriv_ax = fig.subplots(1, 2)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    gelu, gelu_deriv = x * cdf, cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    colors = colormaps["viridis"](np.linspace(0.0, 1.0, max(len(layer_names), 1)))
    labels, prefix = layer_labels(layer_names)
    if prefix:
        fig.suptitle(f"layer names without their common prefix '{prefix}.'", fontsize=9)
    for ax, ys, bands, ref, label in (
        (value_ax, values, value_bands, gelu, "F(x)"),
        (deriv_ax, derivatives, derivative_bands, gelu_deriv, "F'(x)"),
    ):
        ax.plot(x, ref, "--", color="gray", lw=1, label="GELU")
        for i in range(len(layer_names)):
            ax.plot(x, ys[i], color=colors[i], lw=1.4, label=labels[i] if len(layer_names) <= 12 else None)
            if bands is not None:
                ax.fill_between(x, bands[i, 0], bands[i, 1], color=colors[i], alpha=0.15, lw=0)
        ax.set_xlabel("x")
        ax.set_title(f"{label} at step {step}")
        ax.grid(True, alpha=0.3)
    value_ax.legend(fontsize=7, loc="upper left")
    if len(layer_names) > 12:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(Normalize(0, len(layer_names) - 1), colormaps["viridis"])
        fig.colorbar(mappable, ax=deriv_ax, label="layer (depth)")
    fig.tight_layout()
    return _to_rgb(fig)
