"""Losses for the deblurring network (`--loss_type`, SPEC 7).

Every loss module is called as loss(pred, gt) on (B, N, C, H, W) RGB [0, 1] sequences and returns
(total, dict of detached terms for logging).
"""
from losses.hypercut import HyperCUTLoss
from losses.naive import NaiveLoss, charbonnier, naive_loss
from losses.order_inv import OrderInvLoss, order_inv_loss, order_inv_terms
from losses.pit import PITLoss, pit_loss

LOSS_TYPES = ("naive", "order_inv", "hypercut", "pit")


def build_loss(loss_type: str, hypercut=None, alpha: float = 0.2):
    """The loss module for --loss_type; "hypercut" needs a HyperCUT model (see models.hypercut.load_hypercut)."""
    if loss_type == "naive":
        return NaiveLoss()
    if loss_type == "order_inv":
        return OrderInvLoss()
    if loss_type == "pit":
        return PITLoss()
    if loss_type == "hypercut":
        if hypercut is None:
            raise ValueError("--loss_type hypercut needs a HyperCUT model: pass --hypercut_path")
        return HyperCUTLoss(hypercut, alpha=alpha)
    raise ValueError(f"unknown loss type {loss_type!r}; choose from {', '.join(LOSS_TYPES)}")


__all__ = ["LOSS_TYPES", "build_loss", "charbonnier", "naive_loss", "order_inv_loss", "order_inv_terms",
           "NaiveLoss", "OrderInvLoss", "HyperCUTLoss", "PITLoss", "pit_loss"]
