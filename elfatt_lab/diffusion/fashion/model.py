"""The class-conditional diffusion models on 32x32 Fashion-MNIST pixels, each with a null class for classifier-free
guidance: Stable Diffusion's UNet (diffusers' ``UNet2DConditionModel``, conditioned through cross-attention on a
learned class embedding) and a DiT (diffusers' ``DiTTransformer2DModel``, patch 2, conditioned through adaLN-Zero);
their schedulers, sampling loop and files."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from elfatt_lab._arguments import one_line
from elfatt_lab._atomic import atomic_write_bytes

__all__ = [
    "DIT_CONFIG",
    "GENERATORS",
    "IMAGE_SIDE",
    "NUM_CLASSES",
    "SCHEDULE",
    "UNET_CONFIG",
    "ClassConditionalDiT",
    "ClassConditionalUNet",
    "build_generator",
    "generator_class",
    "generate",
    "load_model",
    "save_model",
    "sampling_scheduler",
    "to_model_range",
    "training_scheduler",
]

IMAGE_SIDE = 32
NUM_CLASSES = 10
# SD's layout at toy width: two CrossAttn levels (32x32 = 1024 tokens, then 16x16) and a plain bottom level; an up
# block has layers_per_block + 1 transformer layers, so the 32x32 level holds 3 self-attention layers. In diffusers'
# naming ``attention_head_dim`` is the number of heads (as in SD 1.5's config, where it is 8): 2 here (16 channels
# each at the top), the fewest the patch can split (why: docs/lab-notes.md).
UNET_CONFIG = dict(
    sample_size=IMAGE_SIDE,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=2,
    norm_num_groups=16,
    # The class (or the null class) also enters through the time embedding, into every ResNet block, as in ADM; the
    # first UNet trained here (results/diffusion-fashion-mnist) had only the cross-attention token, and its samples
    # named the asked class for 31% (34% after 500 more steps).
    num_class_embeds=NUM_CLASSES + 1,
)
# DiT-S's layout at toy width: 16x16 = 256 tokens of 2x2 pixels, 4 heads of 32 channels (the patch splits 2 global +
# 2 block heads), 6 blocks.
DIT_CONFIG = dict(
    sample_size=IMAGE_SIDE,
    patch_size=2,
    in_channels=1,
    out_channels=1,
    num_attention_heads=4,
    attention_head_dim=32,
    num_layers=6,
)
# The noise schedule shared by training (DDPM) and sampling (DDIM).
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


class _ClassConditional(nn.Module):
    """What both generators hold: their config (``defaults`` updated by ``model_config``) and the class count, the
    null class being ``num_classes``."""

    def __init__(self, defaults: dict, model_config: dict | None, num_classes: int) -> None:
        super().__init__()
        self.model_config = dict(defaults, **(model_config or {}))
        self.num_classes = num_classes

    @property
    def null_class(self) -> int:
        return self.num_classes


class ClassConditionalUNet(_ClassConditional):
    """``UNet2DConditionModel`` whose ``encoder_hidden_states`` is one token: the embedding of the class, or of the
    null class ``num_classes`` (classifier-free guidance's unconditional branch).

    ``apply_patch(model)`` finds the UNet as ``model.unet``, as it does on a pipeline.
    """

    name = "unet"

    def __init__(self, model_config: dict | None = None, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(UNET_CONFIG, model_config, num_classes)
        from diffusers import UNet2DConditionModel

        self.unet = UNet2DConditionModel(**self.model_config)
        self.class_embedding = nn.Embedding(num_classes + 1, self.model_config["cross_attention_dim"])

    @property
    def denoiser(self) -> nn.Module:
        return self.unet

    def forward(self, sample: Tensor, timestep: Tensor | int, labels: Tensor) -> Tensor:
        """The predicted noise of ``sample`` ``[B, 1, H, W]`` at ``timestep`` given ``labels`` ``[B]``."""
        context = self.class_embedding(labels)[:, None]
        class_labels = labels if self.model_config.get("num_class_embeds") else None
        return self.unet(sample, timestep, encoder_hidden_states=context, class_labels=class_labels).sample


class ClassConditionalDiT(_ClassConditional):
    """``DiTTransformer2DModel`` predicting the noise (no learned variance); its label embeddings hold the null class
    ``num_classes``. Their own random label dropout is turned off: training replaces labels itself, from its seeded
    generator, so that a resumed run draws what an uninterrupted one does.

    ``apply_patch(model)`` finds the transformer as ``model.transformer``, as it does on a pipeline.
    """

    name = "dit"

    def __init__(self, model_config: dict | None = None, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(DIT_CONFIG, model_config, num_classes)
        from diffusers import DiTTransformer2DModel
        from diffusers.models.embeddings import LabelEmbedding

        self.transformer = DiTTransformer2DModel(**self.model_config, num_embeds_ada_norm=num_classes)
        for module in self.transformer.modules():
            if isinstance(module, LabelEmbedding):
                module.dropout_prob = 0.0

    @property
    def denoiser(self) -> nn.Module:
        return self.transformer

    def forward(self, sample: Tensor, timestep: Tensor | int, labels: Tensor) -> Tensor:
        """The predicted noise of ``sample`` ``[B, 1, H, W]`` at ``timestep`` (one, or one per sample) given
        ``labels`` ``[B]``."""
        timestep = torch.as_tensor(timestep, device=sample.device).expand(len(sample))
        return self.transformer(sample, timestep=timestep, class_labels=labels).sample


GENERATORS: dict[str, type[_ClassConditional]] = {
    kind.name: kind for kind in (ClassConditionalUNet, ClassConditionalDiT)
}


def generator_class(name: str) -> type[_ClassConditional]:
    """The generator called ``name`` (``--generator``); ValueError naming the known ones otherwise."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[name]


def build_generator(description: dict) -> nn.Module:
    """The untrained generator a saved description names (``generator``, ``model_config``, ``num_classes``);
    descriptions written before the DiT existed name a UNet by its ``unet_config``."""
    kind = generator_class(description.get("generator", "unet"))
    config = description.get("model_config")
    if config is None:  # the first UNet's description: its config is complete, and has no class embeddings
        config = dict(description["unet_config"], num_class_embeds=None)
    return kind(config, description["num_classes"])


def training_scheduler():
    """diffusers' ``DDPMScheduler`` on :data:`SCHEDULE`: the forward process the model is trained on."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE)


def sampling_scheduler(steps: int):
    """diffusers' ``DDIMScheduler`` (eta 0, deterministic) on :data:`SCHEDULE`, set to ``steps`` steps spaced from
    the last training step ("trailing", which few-step sampling needs with this schedule)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", clip_sample=True)
    scheduler.set_timesteps(steps)
    return scheduler


def to_model_range(images: Tensor) -> Tensor:
    """uint8 images ``[n, 28, 28]`` to the model's input: ``[n, 1, 32, 32]`` in ``[-1, 1]``, padded with black."""
    pixels = images.float().div(127.5).sub(1.0).unsqueeze(1)
    pad = (IMAGE_SIDE - images.shape[-1]) // 2
    return nn.functional.pad(pixels, (pad,) * 4, value=-1.0)


@torch.inference_mode()
def generate(
    model: ClassConditionalUNet | ClassConditionalDiT,
    labels: Sequence[int],
    seeds: Sequence[int],
    *,
    steps: int = 20,
    guidance: float = 3.0,
    batch_size: int = 50,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """Samples ``[n, 1, 32, 32]`` in ``[-1, 1]``: sample ``i`` of class ``labels[i]`` from the noise of
    ``torch.Generator().manual_seed(seeds[i])``, denoised by DDIM in ``steps`` steps with classifier-free
    guidance ``guidance`` (1 is none). The same seeds give the same noise whatever the batching or the model.
    ``on_batch(n)`` is called after each batch of ``n`` samples (a progress bar)."""
    if len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    device = next(model.parameters()).device
    noise = torch.stack(
        [torch.randn(1, IMAGE_SIDE, IMAGE_SIDE, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    )
    classes = torch.as_tensor(list(labels), dtype=torch.long)
    scheduler = sampling_scheduler(steps)  # DDIM's step keeps no state between calls
    out = []
    for start in range(0, len(seeds), batch_size):
        x = noise[start : start + batch_size].to(device)
        label = classes[start : start + batch_size].to(device)
        both = torch.cat([label, torch.full_like(label, model.null_class)])
        for step in scheduler.timesteps:
            conditional, unconditional = model(torch.cat([x, x]), step, both).chunk(2)
            x = scheduler.step(unconditional + guidance * (conditional - unconditional), step, x).prev_sample
        out.append(x.clamp(-1, 1).cpu())
        if on_batch is not None:
            on_batch(len(x))
    return torch.cat(out) if out else noise


def save_model(model: nn.Module, folder: Path, name: str, config: dict) -> None:
    """``<name>.safetensors`` (the weights) and ``<name>.json`` (``config``, what rebuilds the model) in ``folder``."""
    from safetensors.torch import save

    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    atomic_write_bytes(save(state), folder / f"{name}.safetensors")
    atomic_write_bytes((json.dumps(config, indent=2) + "\n").encode(), folder / f"{name}.json")


def load_model(folder: Path, name: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """The model ``build(config)`` with the weights of ``<name>.safetensors``, in eval mode, and its config.

    Raises:
        ValueError: in one line, when the files are missing or do not fit the model.
    """
    from safetensors.torch import load_file

    weights, description = folder / f"{name}.safetensors", folder / f"{name}.json"
    if not (weights.is_file() and description.is_file()):
        raise ValueError(f"no {name} in {folder} ({weights.name} and {description.name}); train it first")
    config = json.loads(description.read_text())
    model = build(config)
    try:
        model.load_state_dict(load_file(weights))
    except (RuntimeError, OSError) as error:
        raise ValueError(f"{weights} does not fit the model of {description.name}: {one_line(error)}") from None
    return model.eval(), config
