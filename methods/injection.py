"""One picture of where each method's trained numbers enter the frozen model.

    tokens -> E[x] + W_pos -> block 0 .. block L-1 -> LayerNorm -> tied head E^T

Every method leaves the base model's weights as they are (LoRA and full fine-tuning, drawn
for comparison, do not) and enters it at one of four sites, its class's `injects`:

    input_embeddings   P vectors in front of the input embeddings   (the `inputs_embeds` hook)
    hidden_states      the hidden states at P positions entering every layer  (`hidden_prompts`)
    keys_values        P keys and values in front of every layer's own        (`prefix_kv`)
    weights            the weight matrices themselves

`draw_injection()` draws the model with all four; `draw_injection("deep_prompt")` (a method
name from methods/registry.py, or a site) draws that site in colour, the rest in grey. The
method names on the picture are read from the registry, so a new method appears by itself.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from . import registry

SITES = {  # site -> (colour, what it is)
    "input_embeddings": ("#1f77b4", "input embeddings, P vectors in front"),
    "hidden_states": ("#2ca02c", "hidden states at P positions entering every layer"),
    "keys_values": ("#d62728", "keys and values of every layer"),
    "weights": ("#9467bd", "the weights (for comparison)"),
}
# what the literature also calls a site's method
NOTES = {"keys_values": "also P-tuning v2 (its code's past_key_values)"}
GREY, FROZEN, EDGE = "#c4c4c4", "#eeeeee", "#555555"


def methods_at(site: str) -> list[str]:
    """The registry's labels of the methods that inject at `site`."""
    return [m.label for m in registry.METHODS.values() if m.model_class.injects == site]


def site_of(highlight: str | None) -> str | None:
    if highlight is None or highlight in SITES:
        return highlight
    name = registry.canonical(highlight)
    if name in registry.METHODS:
        return registry.METHODS[name].model_class.injects
    raise ValueError(f"draw_injection: unknown highlight {highlight!r}; pass a method name "
                     f"({', '.join(registry.METHODS)}), a site ({', '.join(SITES)}), or None for all")


def box(ax, x, y, w, h, text, face=FROZEN, edge=EDGE, size=8, **kw):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=face, ec=edge,
                                lw=1.0, **kw))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def arrow(ax, start, end, color=EDGE, lw=1.0, style="-|>", **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, color=color, lw=lw,
                                 shrinkA=0, shrinkB=0, **kw))


def vectors(ax, x, y, color, n=3, side=0.22):
    """P trained vectors, drawn as n small squares side by side from (x, y)."""
    for i in range(n):
        ax.add_patch(FancyBboxPatch((x + i * (side + 0.05), y), side, side, boxstyle="square,pad=0", fc=color,
                                    ec="white", lw=0.5))


def draw_block(ax, x0, y, name, colour_of):
    """One block on the residual stream at height y, from x0: LN -> attention -> (+), LN -> MLP -> (+)."""
    ax.add_patch(FancyBboxPatch((x0, y - 0.75), 4.3, 3.35, boxstyle="round,pad=0.02,rounding_size=0.2", fc="none",
                                ec="#999999", lw=0.8, ls="--"))
    ax.text(x0 + 4.2, y - 0.6, name, fontsize=7, color="#666666", ha="right")
    weights = EDGE if colour_of("weights") == GREY else colour_of("weights")  # trained weights: in colour
    for ln_x, sub_x, sub_w, label, plus_x in [(x0 + 0.35, x0 + 1.05, 1.35, "attention\n", x0 + 2.55),
                                              (x0 + 2.8, x0 + 3.5, 0.6, "MLP", x0 + 4.1)]:
        box(ax, ln_x, y + 0.9, 0.5, 0.75, "LN", size=7)
        box(ax, sub_x, y + 0.9, sub_w, 0.75, label, edge=weights, size=8)
        arrow(ax, (ln_x + 0.25, y), (ln_x + 0.25, y + 0.9))  # up from the stream
        arrow(ax, (ln_x + 0.5, y + 1.27), (sub_x, y + 1.27))
        arrow(ax, (sub_x + sub_w, y + 1.27), (plus_x, y + 1.27), style="-")
        arrow(ax, (plus_x, y + 1.27), (plus_x, y + 0.13))  # back down into the sum
        ax.add_patch(plt.Circle((plus_x, y), 0.13, fc="white", ec=EDGE, lw=1.0, zorder=3))
        ax.text(plus_x, y - 0.01, "+", ha="center", va="center", fontsize=8, zorder=4)
    for i, letter in enumerate("QKV"):  # the three projections inside the attention box
        ax.text(x0 + 1.38 + 0.36 * i, y + 1.02, letter, ha="center", fontsize=7, weight="bold",
                color=SITES["keys_values"][0] if letter != "Q" and colour_of("keys_values") != GREY else EDGE)
    return {"enter": (x0 + 0.12, y), "kv": (x0 + 1.92, y + 1.65), "weights": (x0 + 1.9, y + 0.9)}


def draw_injection(highlight: str | None = None, ax=None):
    """The frozen model and where each method injects; `highlight` (a method or a site) in colour.

    Returns the matplotlib Figure (drawn into `ax` when one is given).
    """
    site = site_of(highlight)
    lit = set(SITES) if site is None else {site}

    def colour_of(s):
        return SITES[s][0] if s in lit else GREY

    def label(s, x, yy, width, ha="left"):
        names = ", ".join(methods_at(s)) + (f"; {NOTES[s]}" if s in NOTES else "")
        text = "\n".join(textwrap.wrap(SITES[s][1] + ":", width) + textwrap.wrap(names, width))
        ax.text(x, yy, text, ha=ha, va="top", fontsize=8, color=colour_of(s),
                weight="bold" if s in lit and site is not None else "normal")

    if ax is None:
        fig, ax = plt.subplots(figsize=(9, 5))
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.94)
    ax.set_xlim(0, 18)
    ax.set_ylim(1.5, 9.0)
    ax.axis("off")
    y = 4.6  # the residual stream
    box(ax, 0.05, y - 0.45, 1.2, 0.9, "tokens\nx$_1$..x$_T$")
    box(ax, 1.65, y - 0.45, 1.95, 0.9, "E[x] + W$_{pos}$\nembeddings")
    arrow(ax, (1.25, y), (1.65, y))
    ax.plot([3.6, 13.75], [y, y], color=EDGE, lw=1.2, zorder=1)  # the residual stream through the blocks
    blocks = [draw_block(ax, 4.0, y, "block 0", colour_of), draw_block(ax, 8.6, y, "block 1", colour_of)]
    ax.text(13.3, y + 0.2, "...", ha="center", fontsize=10)
    ax.annotate("", (4.0, y + 2.85), (12.9, y + 2.85), arrowprops={"arrowstyle": "|-|", "color": "#888888",
                                                                   "mutation_scale": 3, "lw": 0.8})
    ax.text(8.45, y + 2.95, "x L blocks:  x = x + attention(LN(x)),  then  x = x + MLP(LN(x))", ha="center",
            fontsize=7.5, color="#666666")
    box(ax, 13.75, y - 0.45, 0.8, 0.9, "LN")
    box(ax, 14.9, y - 0.45, 1.35, 0.9, "tied head\nE$^T$")
    arrow(ax, (14.55, y), (14.9, y))
    arrow(ax, (16.25, y), (16.55, y))
    ax.text(16.6, y, "logits", va="center", fontsize=8)

    c = colour_of("input_embeddings")  # soft prompt, P-tuning: vectors in front of the input
    vectors(ax, 2.25, y - 1.45, c)
    arrow(ax, (2.62, y - 1.2), (2.62, y - 0.45), color=c, lw=1.4)
    label("input_embeddings", 0.05, y - 1.75, 27)
    c = colour_of("hidden_states")  # deep prompt: the hidden states entering every block
    for b in blocks:
        vectors(ax, b["enter"][0] - 0.37, y - 1.45, c)
        arrow(ax, (b["enter"][0], y - 1.2), (b["enter"][0], y - 0.05), color=c, lw=1.4)
    label("hidden_states", 4.4, y - 1.75, 40)
    c = colour_of("keys_values")  # prefix tuning: keys and values in front of every layer's own
    for b in blocks:
        vectors(ax, b["kv"][0] - 0.37, b["kv"][1] + 0.55, c)
        arrow(ax, (b["kv"][0], b["kv"][1] + 0.55), b["kv"], color=c, lw=1.4)
    label("keys_values", 4.0, y + 3.85, 90)
    c = colour_of("weights")  # LoRA, full fine-tuning: the weights themselves
    label("weights", 12.9, y - 1.75, 30)
    arrow(ax, (12.8, y - 1.9), blocks[1]["weights"], color=c, lw=0.8, ls=":", connectionstyle="arc3,rad=-0.25")
    title = "where the trained numbers enter the frozen model"
    if site is not None:
        title += ": " + (SITES[site][1] if highlight == site else registry.METHODS[registry.canonical(highlight)].label)
    ax.set_title(title, fontsize=10)
    return ax.figure
