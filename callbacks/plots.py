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


def depth_figure(
    title: str, layer_names: Sequence[str], current: np.ndarray, steps: Sequence[int], history: np.ndarray, step: int,
    axis_label: str = "layer (forward order)",
) -> np.ndarray:  # fmt: skip
    """Left: the variance of every layer against its depth at ``step``. Right: a layer x step heat map of
    log10(variance) over the run (``history`` is ``[layers, len(steps)]``; non-finite cells stay blank)."""
    fig = _figure(12, 4.5)
    depth_ax, heat_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    depth = np.arange(len(layer_names))
    finite = np.isfinite(current) & (current > 0)
    depth_ax.plot(depth[finite], current[finite], "o-", color="tab:blue")
    bad = ~np.isfinite(current)
    if bad.any():
        depth_ax.plot(depth[bad], np.full(bad.sum(), np.nanmax(current[finite]) if finite.any() else 1.0), "x",
                      color="tab:red", label="non-finite")  # fmt: skip
        depth_ax.legend(loc="best")
    if finite.any():
        depth_ax.set_yscale("log")
    depth_ax.set_xlabel(axis_label)
    depth_ax.set_ylabel("variance")
    depth_ax.set_title(f"{title} at step {step}")
    depth_ax.grid(True, which="both", alpha=0.3)

    image = heat_ax.imshow(_log10(history), aspect="auto", origin="upper", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=heat_ax, label="log10 variance")
    heat_ax.set_xlabel("step")
    heat_ax.set_ylabel(axis_label)
    heat_ax.set_title(f"{title}: {axis_label.split(' ')[0]} x step")
    ticks = np.unique(np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).round().astype(int))
    heat_ax.set_xticks(ticks, [str(steps[t]) for t in ticks])
    labels, pattern = short_names(layer_names)
    if pattern != "*":
        fig.suptitle(f"layers: {pattern}", fontsize=9, y=0.995)
    long_labels = len(layer_names) <= 24 and max(map(len, labels), default=0) > 6
    if len(layer_names) <= 24:
        depth_ax.set_xticks(depth, labels, rotation=60 if long_labels else 0, ha="right" if long_labels else "center",
                            fontsize=7)  # fmt: skip
        heat_ax.set_yticks(depth, labels, fontsize=7)
    if long_labels:
        fig.tight_layout()  # makes room for long names; costs about as much as drawing
    else:
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.88, wspace=0.22)
    return _to_rgb(fig)


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
    for ax, ys, bands, ref, label in (
        (value_ax, values, value_bands, gelu, "F(x)"),
        (deriv_ax, derivatives, derivative_bands, gelu_deriv, "F'(x)"),
    ):
        ax.plot(x, ref, "--", color="gray", lw=1, label="GELU")
        for i, name in enumerate(layer_names):
            ax.plot(x, ys[i], color=colors[i], lw=1.4, label=name if len(layer_names) <= 12 else None)
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
