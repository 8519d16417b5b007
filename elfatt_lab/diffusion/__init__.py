"""The diffusion patch measured: its benchmark on diffusers' UNets (:mod:`~elfatt_lab.diffusion.bench`) and the
Fashion-MNIST generator trained here to judge its image quality (:mod:`~elfatt_lab.diffusion.fashion`)."""
