"""The generator stages: the conditional GAN, or the diffusion generator, image -> vector."""

from __future__ import annotations

import numpy as np

from starqso.training.inputs import trunk_side
from starqso.training.stages.base import (
    Stage,
    generate_vectors,
    summary_metrics,
    with_trunk_weights,
)


def discriminator_filters(model_config):
    """The discriminator's image trunk: half the generator's widths.

    It only has to judge whether a vector fits an image; a lighter trunk halves the GAN's cost
    per step (the GAN stage dominates `fit` on CPUs) and keeps it from overpowering the
    generator.
    """
    return tuple(max(4, width // 2) for width in model_config.image_filters)


class GANStage(Stage):
    """The conditional GAN: image (+ photometry) -> the frozen encoder's vector."""

    name = "gan"
    files = ("generator.keras", "discriminator.keras")
    monitor = "val_reconstruction"
    epoch_key = "generator_loss"

    def build(self, context):
        from starqso.models import ConditionalGAN, FeatureDiscriminator, FeatureGenerator

        model_config, training = context.config.model, context.config.training
        generator = FeatureGenerator(trunk_side(model_config), model_config.image_filters,
                                     model_config.feature_dim, model_config.noise_dim,
                                     model_config.dense_units, model_config.dropout,
                                     context.inputs.photometry_dim, trunk=model_config.trunk,
                                     name="generator")
        with_trunk_weights(generator, model_config)
        discriminator = FeatureDiscriminator(
            trunk_side(model_config), discriminator_filters(model_config),
            model_config.feature_dim, model_config.dense_units, model_config.dropout,
            name="discriminator")
        distill = training.gan_distillation_weight > 0
        gan = ConditionalGAN(generator, discriminator, training.gan_reconstruction_weight,
                             seed=training.seed,
                             teacher=context.products["head"] if distill else None,
                             distillation_weight=training.gan_distillation_weight,
                             name="conditional_gan")
        gan.compile(learning_rate=training.gan_learning_rate)
        # Under MirroredStrategy both optimizers must own their slots before the first
        # distributed step, or the second replica fails to create them.
        gan.build_optimizers()
        return gan

    def datasets(self, context):
        return context.split_datasets(context.inputs.arrays, context.products["vectors"],
                                      context.with_spectrum, augment=True)

    def outputs(self, context, model):
        return {"generator.keras": model.generator, "discriminator.keras": model.discriminator}

    def evaluate(self, context, outputs):
        index = context.with_spectrum(context.validation)
        generated = generate_vectors(outputs["generator.keras"], context.inputs.arrays, index,
                                     zero_noise=True)
        head = context.products["head"]
        return {
            "n": int(len(index)),
            "reconstruction_mse": float(np.mean(
                (generated - context.products["vectors"][index]) ** 2)),
            **{f"head_on_generated_{key}": value for key, value in summary_metrics(
                context.labels[index], np.asarray(head(generated))).items() if key != "n"},
        }

    def provide(self, context, outputs):
        context.products["generator"] = outputs["generator.keras"]


class DiffusionStage(GANStage):
    """The diffusion generator: image (+ photometry) -> the frozen encoder's vector.

    The alternative to the GAN (``model.generator: diffusion``): a denoiser (an MLP over the
    noisy vector, conditioned on the image trunk and the photometry) trained to predict the
    noise, and a sampler of ``model.diffusion_steps`` deterministic DDIM steps, unrolled in the
    graph, which takes the GAN generator's place everywhere (the fusion stage, the deployable
    model, export). Trains for ``training.diffusion_epochs`` at ``training.learning_rate``.
    """

    name = "diffusion"
    files = ("generator.keras", "denoiser.keras")
    epoch_key = "denoising_loss"

    def build(self, context):
        from starqso.models.diffusion import ConditionalDiffusion, FeatureDenoiser

        model_config, training = context.config.model, context.config.training
        denoiser = FeatureDenoiser(trunk_side(model_config), model_config.image_filters,
                                   model_config.feature_dim, model_config.dense_units,
                                   model_config.dropout, context.inputs.photometry_dim,
                                   trunk=model_config.trunk, name="denoiser")
        with_trunk_weights(denoiser, model_config)
        diffusion = ConditionalDiffusion(denoiser, model_config.diffusion_steps,
                                         seed=training.seed, name="conditional_diffusion")
        diffusion.compile(learning_rate=training.learning_rate)
        diffusion.build_optimizers()  # as the GAN's, before the first distributed step
        return diffusion

    def outputs(self, context, model):
        return {"generator.keras": model.generator, "denoiser.keras": model.denoiser}
