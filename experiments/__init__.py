"""Experiments that mirror the prompt-tuning papers' findings on the toy base model.

    python -m experiments NAME [--device cuda] [--seeds 0 1 2] [--jobs 12] [--out experiments/results]

One module per experiment, each citing the finding it mirrors:

    prompt_length       Lester et al. 2021, Fig. 3a: how many virtual tokens a soft prompt needs
    initialisation      Lester et al. 2021, Fig. 3b: RANDOM vs SAMPLE_VOCAB vs TEXT initialisation
    reparameterisation  Li & Liang 2021 §4.3, P-tuning: does an encoder in front of the prompt help?
    depth               P-tuning v2: prompts at every layer vs at the input only
    scale               Lester et al. 2021, Fig. 1: the gap to fine-tuning against model size
    hard_vs_soft        a discrete prompt search (greedy over the vocabulary) vs a soft prompt

Each writes `results/NAME/results.json` and `results/NAME/NAME.png`; `common.py` holds the
shared job runner and statistics, `plotting.py` the figure helpers, `hard_prompt.py` the
discrete search. Results and their comparison with the papers: README.md.
"""
