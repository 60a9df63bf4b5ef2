"""Toy world: a synthetic world of coloured shapes in which subjects of a prompt really go missing.

``world`` draws scenes of one to three coloured shapes with captions in the pack's prompt style, ``detect`` reads
an image back (colours and shapes), ``scoring`` compares what was drawn with what the prompt asked for, ``latent``
is the latent space of the world's autoencoder and ``architecture`` the model's configuration. These modules are
plain NumPy/PyTorch. ``comfy_model`` builds ComfyUI's MODEL, CLIP and VAE from the shipped weights; it is the one
module that imports ComfyUI (lazily, inside its functions).
"""
