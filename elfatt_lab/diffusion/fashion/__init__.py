"""A class-conditional diffusion model with Stable Diffusion's UNet, trained here on Fashion-MNIST at 32x32, and
the evaluation of the training-free patch on it: sample quality (Frechet distance in the features of a classifier
trained here, class accuracy) and speed, original against patched, same seeds.

``python -m elfatt_lab.diffusion.fashion classifier`` trains the judge (minutes), ``... train`` the diffusion model
(about an hour on 2 CPU cores; ``--resume`` continues), ``... evaluate`` scores every setting. Needs the
``diffusion`` and ``train`` extras and Fashion-MNIST's idx files (Debian's ``dataset-fashion-mnist``).
"""
