"""Training throughput (samples/s) of each `starqso fit` stage on this machine.

    python benchmarks/fit_speed.py [--preset base] [--steps 20]

Each stage's model is built from the preset exactly as `fit` builds it and trained for
``--steps`` batches of random data of the right shapes (throughput does not depend on pixel
values) after one warm-up batch; the table shows samples per second and the time one epoch
of the default demo data (train split) would take.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from starqso.config import get_preset  # noqa: E402
from starqso.models import (  # noqa: E402
    ConditionalGAN,
    FeatureDiscriminator,
    FeatureGenerator,
    FusionClassifier,
    ImageClassifier,
    SpectrumClassifier,
    SpectrumEncoder,
)
from starqso.training.stages import discriminator_filters  # noqa: E402


def build(stage, config):
    model, training = config.model, config.training
    size, features = model.image_size, model.feature_dim
    rng = np.random.default_rng(0)
    if stage == "encoder":
        net = SpectrumClassifier(SpectrumEncoder(model.spectrum_filters, features),
                                 model.dropout)
        net.compile(keras.optimizers.Adam(), keras.losses.BinaryCrossentropy())
        return net, {"spectrum": rng.normal(size=(1, 3700, 2))}, np.ones((1, 1))
    image = rng.normal(size=(1, size, size, 5))
    if stage == "gan":
        gan = ConditionalGAN(
            FeatureGenerator(size, model.image_filters, features, model.noise_dim,
                             model.dense_units, model.dropout),
            FeatureDiscriminator(size, discriminator_filters(model), features,
                                 model.dense_units, model.dropout),
            training.gan_reconstruction_weight)
        gan.compile(keras.optimizers.Adam(), keras.optimizers.Adam())
        return gan, {"image": image}, rng.uniform(-1, 1, (1, features))
    if stage == "fusion":
        net = FusionClassifier(size, model.image_filters, features, model.dense_units,
                               model.dropout)
        inputs = {"image": image, "features": rng.uniform(-1, 1, (1, features))}
    else:
        net = ImageClassifier(size, model.image_filters, model.dense_units, model.dropout)
        inputs = {"image": image}
    net.compile(keras.optimizers.Adam(), keras.losses.BinaryCrossentropy())
    return net, inputs, np.ones((1, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    config = get_preset(args.preset)
    batch = config.training.batch_size
    train_objects = int(config.data.num_objects * (1 - config.data.validation_fraction
                                                   - config.data.test_fraction))
    print(f"preset {args.preset}, batch {batch}, {os.cpu_count()} CPU cores, "
          f"{platform.processor() or platform.machine()}, keras {keras.__version__}\n")
    print("| stage | parameters | samples/s | s per epoch of the demo train split |")
    print("|---|---|---|---|")
    for stage in ("encoder", "gan", "fusion", "image"):
        model, one_inputs, one_target = build(stage, config)
        inputs = {k: np.repeat(v, batch, axis=0).astype("float32") for k, v in
                  one_inputs.items()}
        target = np.repeat(one_target, batch, axis=0).astype("float32")
        model.fit(inputs, target, batch_size=batch, epochs=1, verbose=0)  # warm-up, tracing
        repeated = {k: np.concatenate([v] * args.steps) for k, v in inputs.items()}
        began = time.perf_counter()
        model.fit(repeated, np.concatenate([target] * args.steps), batch_size=batch,
                  epochs=1, verbose=0, shuffle=False)
        rate = batch * args.steps / (time.perf_counter() - began)
        print(f"| {stage} | {model.count_params():,} | {rate:,.0f} | "
              f"{train_objects / rate:.1f} |")


if __name__ == "__main__":
    main()
