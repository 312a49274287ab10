"""Evaluation metrics, one module per concern: `image` (PSNR, SSIM), `lpips` (LPIPS and its AlexNet
weights), `sequence` (the order-agnostic p-scores and the SequenceMetrics accumulator). Hit and
consistency of HyperCUT scores live beside the model, in models/hypercut.py."""
