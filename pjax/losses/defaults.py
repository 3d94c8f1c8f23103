"""The default of every loss hyperparameter: `configs/base.py` builds `config.loss` from this table, and
objectives read a key a config leaves out (e.g. a hand-made one in a test) from it."""

DEFAULTS = dict(
    beta=0.1,  # KL strength (DPO family), 1/(2 tau) target for IPO, lambda for ORPO
    label_smoothing=0.0,  # epsilon: cDPO / rDPO flip rate, AOT smoothing, EXO (needs > 0, e.g. 1e-3)
    f_divergence="reverse_kl",  # reverse_kl | forward_kl | js_divergence | alpha_divergence (f-DPO)
    f_alpha=0.5,  # alpha of the alpha-divergence
    ld_alpha=1.0,  # LD-DPO weight of tokens past the shorter response (1 = plain sums)
    use_weighting=False,  # WPO per-pair weights
    rpo_alpha=1.0,  # RPO: weight of the chosen NLL added to DPO
    dpop_lambda=50.0,  # DPO-positive penalty
    length_alpha=0.0,  # R-DPO length regulariser
    discopop_tau=0.05,
    simpo_gamma=0.5,  # SimPO / CPO-SimPO target margin
    cpo_alpha=1.0,  # CPO: weight of the chosen NLL
    orpo_nll_on_prompt=False,  # ORPO: the chosen NLL over the completion (paper) | prompt + completion (TRL)
    desirable_weight=1.0,  # KTO / BCO
    undesirable_weight=1.0,
    pro_sft_weight=1.0,  # PRO: weight of the top response's NLL
    center_rewards_coefficient=0.0,  # reward models: penalty on mean (r_c + r_r)^2 (TRL's name)
)


def option(cfg, name: str):
    """`cfg[name]`, or its default when the config leaves it out."""
    return cfg.get(name, DEFAULTS[name])
