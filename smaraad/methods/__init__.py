"""The methods registry: a plain dict from name to MethodSpec.

Adding a method: write one module with a params dataclass and a loss returning named terms, then
add one line here. Every registered method is exercised by tests/test_methods.py for free.
"""

from __future__ import annotations

from smaraad.methods.adaad import AdaADParams, adaad_loss
from smaraad.methods.ard import ARDParams, ard_loss
from smaraad.methods.base import Context, MethodSpec, batch_mean
from smaraad.methods.iad import IADParams, iad_loss
from smaraad.methods.igdm import IGDMParams, igdm_loss
from smaraad.methods.las_at import LASATParams, las_at_loss, make_strategy
from smaraad.methods.mtard import MTARDParams, mtard_loss
from smaraad.methods.natural import NaturalParams, natural_loss
from smaraad.methods.peeraid import PeerAiDParams, make_peer, peeraid_loss
from smaraad.methods.pgd_at import PGDATParams, pgd_at_loss
from smaraad.methods.rslad import RSLADParams, rslad_loss
from smaraad.methods.smaraad import (SmaraADParams, SmaraADPPParams, smaraad_loss,
                                     smaraad_pp_loss)
from smaraad.methods.trades import TRADESParams, trades_loss

METHODS: dict[str, MethodSpec] = {
    "smaraad": MethodSpec(SmaraADParams, smaraad_loss, doc="SmaraAD, Eq. 8-9"),
    "smaraad_pp": MethodSpec(SmaraADPPParams, smaraad_pp_loss, doc="SmaraAD++, Eq. 8-10"),
    # The ablation of Figure 4: Eq. 8's attack, four outer losses.
    "kd": MethodSpec(SmaraADParams, smaraad_loss, defaults={"outer": "kl", "align": False},
                     doc="ablation: KL outer loss, no alignment"),
    "kd_align": MethodSpec(SmaraADParams, smaraad_loss, defaults={"outer": "kl"},
                           doc="ablation: KL + L_align"),
    "sm": MethodSpec(SmaraADParams, smaraad_loss, defaults={"align": False},
                     doc="ablation: L_sm only"),
    "sm_align": MethodSpec(SmaraADParams, smaraad_loss, doc="ablation: L_sm + L_align (= SmaraAD)"),
    "pgd_at": MethodSpec(PGDATParams, pgd_at_loss, needs_teacher=False,
                         doc="PGD-AT (Madry et al., 2018); trains teachers"),
    # Baselines (docs/baselines.md): each a reference repository's recipe, quirks as switches.
    # dataset_defaults: what the reference scripts change on CIFAR-100 (docs/baselines.md, "Defaults
    # that follow the data set": the table tests/test_dataset_defaults.py checks this against).
    "trades": MethodSpec(TRADESParams, trades_loss, needs_teacher=False,
                         doc="TRADES (Zhang et al., 2019)"),
    "ard": MethodSpec(ARDParams, ard_loss, doc="ARD (Goldblum et al., 2020)"),
    "iad": MethodSpec(IADParams, iad_loss, doc="IAD-I (Zhu et al., 2022)"),
    "rslad": MethodSpec(RSLADParams, rslad_loss, dataset_defaults={"cifar100": {"scale": 10.0}},
                        doc="RSLAD (Zi et al., 2021)"),
    "adaad": MethodSpec(AdaADParams, adaad_loss,
                        dataset_defaults={"cifar100": {"kl_reduction": "batchmean"}},
                        doc="AdaAD (Huang et al., 2023)"),
    "mtard": MethodSpec(MTARDParams, mtard_loss, needs_natural_teacher=True,
                        dataset_defaults={"cifar100": {"scale": 10.0}},
                        doc="MTARD (Zhao et al., 2022): adversarial + natural teacher"),
    "natural": MethodSpec(NaturalParams, natural_loss, needs_teacher=False,
                          doc="natural training (CE on clean inputs); MTARD's natural teacher"),
    "igdm": MethodSpec(IGDMParams, igdm_loss, dataset_defaults={"cifar100": {"igdm_alpha": 10.0}},
                       doc="IGDM on AdaAD (Lee et al., ICLR 2025)"),
    # Methods that train a network besides the student (MethodSpec.aux)
    "peeraid": MethodSpec(PeerAiDParams, peeraid_loss, needs_teacher=False, aux=make_peer,
                          dataset_defaults={"cifar100": {"gamma2": 1.0}},
                          doc="PeerAiD (Jung et al., CVPR 2024): a peer trained alongside"),
    "las_at": MethodSpec(LASATParams, las_at_loss, needs_teacher=False, aux=make_strategy,
                         dataset_defaults={"cifar100": {
                             "factor": 0.6, "policy_momentum": 0.9, "policy_weight_decay": 5e-4,
                             "action_space": "readme_cifar100"}},
                         doc="LAS-AT (Jia et al., CVPR 2022): a learned attack strategy"),
}

ABLATION_VARIANTS = ("kd", "kd_align", "sm", "sm_align")

__all__ = ["METHODS", "ABLATION_VARIANTS", "MethodSpec", "Context", "batch_mean"]
