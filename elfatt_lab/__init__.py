"""elfatt_lab: what measures the ``elfatt`` library: the benchmark, training and experiments, the data generators,
the peer mechanisms, the diffusion study and the ``elfatt`` command. It imports the library; the library never
imports it."""
