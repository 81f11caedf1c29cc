"""Image classifiers: the fusion classifier (image + spectral vector), the image-only
baseline with the same trunk, and the deployable image -> p(QSO) model."""

from __future__ import annotations

import keras
from keras import layers

from starqso.models.blocks import (
    TRUNK,
    TRUNK_EMBEDDING,
    BinaryClassifierDefaults,
    ConstructorConfig,
    check_num_classes,
    class_output,
    deserialize_submodel,
    photometry_branch,
)
from starqso.models.calibration import LogitBlend
from starqso.models.layers import PACKAGE, AperturePhotometry, CutoutScaling, ZeroNoise
from starqso.models.trunks import image_trunk_features, keep_trunk_arguments
from starqso.schema import output_name


@keras.saving.register_keras_serializable(package=PACKAGE)
class ImageClassifier(BinaryClassifierDefaults, ConstructorConfig, keras.Model):
    """Scaled image -> p(QSO): the image-only baseline.

    Args:
        image_size: cutout side in pixels.
        filters: image-trunk widths.
        dense_units: embedding width.
        dropout: dropout rate.
        trunk: the image trunk, one of :data:`starqso.config.TRUNKS`.
        num_classes: 2 (p(QSO), (N, 1)) or the number of classes (softmax, (N, K)).

    Example:
        >>> model = ImageClassifier(16, filters=(4, 8), dense_units=8)
    """

    CONFIG_KEYS = ("image_size", "filters", "dense_units", "dropout", "trunk", "num_classes")

    def __init__(self, image_size=32, filters=(32, 64, 96), dense_units=128, dropout=0.2,
                 trunk="cnn", num_classes=2, **kwargs):
        num_classes = check_num_classes("ImageClassifier", num_classes)
        image = keras.Input((image_size, image_size, 5), name="image")
        x = image_trunk_features(image, trunk, filters, dense_units, dropout, name=TRUNK)
        probability = class_output(x, num_classes)
        super().__init__(inputs={"image": image}, outputs=probability, **kwargs)
        keep_trunk_arguments(self, image_size, filters, dense_units, dropout, trunk)
        self.num_classes = num_classes


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusionClassifier(BinaryClassifierDefaults, ConstructorConfig, keras.Model):
    """(scaled image, spectral feature vector) -> p(QSO).

    The vector is the GAN generator's at training and inference (or the real encoder's, for
    the upper-bound comparison); the image trunk is the same architecture as
    :class:`ImageClassifier`, so the two differ only by the vector.

    Args:
        image_size: cutout side in pixels.
        filters: image-trunk widths.
        feature_dim: length of the feature vector.
        dense_units: width of the hidden layers.
        dropout: dropout rate.
        photometry_dim: length of an extra ``"photometry"`` input (standardised aperture
            photometry), fed through a dense branch; 0 (the paper's fusion) for none.
        trunk: the image trunk, one of :data:`starqso.config.TRUNKS`.
        embedding_dim: 0 (the paper's fusion) for its own image trunk on an ``"image"``
            input; otherwise the length of an ``"embedding"`` input that replaces both: the
            GAN generator's trunk embedding of the same image (``model.shared_trunk``), so the
            deployed model runs one CNN instead of two. ``image_size``, ``filters`` and
            ``trunk`` then describe that trunk.
        num_classes: 2 (p(QSO), (N, 1)) or the number of classes (softmax, (N, K)).

    Example:
        >>> fusion = FusionClassifier(16, filters=(4, 8), feature_dim=8, photometry_dim=6)
        >>> shared = FusionClassifier(16, filters=(4, 8), feature_dim=8, embedding_dim=8)
        >>> sorted(shared.input)
        ['embedding', 'features']
    """

    CONFIG_KEYS = ("image_size", "filters", "feature_dim", "dense_units", "dropout",
                   "photometry_dim", "trunk", "embedding_dim", "num_classes")

    def __init__(self, image_size=32, filters=(32, 64, 96), feature_dim=128, dense_units=128,
                 dropout=0.2, photometry_dim=0, trunk="cnn", embedding_dim=0, num_classes=2,
                 **kwargs):
        num_classes = check_num_classes("FusionClassifier", num_classes)
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or (
                embedding_dim < 0):
            raise ValueError(f"FusionClassifier embedding_dim must be an integer >= 0. "
                             f"Received: embedding_dim={embedding_dim!r}")
        features = keras.Input((feature_dim,), name="features")
        if embedding_dim:
            embedding = keras.Input((embedding_dim,), name="embedding")
            inputs = {"embedding": embedding, "features": features}
            # The generator's embedding is frozen here; one dense layer of the fusion's own
            # maps it to what classification needs.
            x = layers.Dropout(dropout, name="embedding_dropout")(embedding) if dropout else (
                embedding)
            x = layers.Dense(dense_units, activation="relu", name="embedding_dense")(x)
        else:
            image = keras.Input((image_size, image_size, 5), name="image")
            inputs = {"image": image, "features": features}
            x = image_trunk_features(image, trunk, filters, dense_units, dropout, name=TRUNK)
        branches = [x, layers.Dense(dense_units, activation="relu",
                                    name="features_dense")(features)]
        if photometry_dim:
            inputs["photometry"] = keras.Input((photometry_dim,), name="photometry")
            branches.append(photometry_branch(inputs["photometry"], dense_units))
        x = layers.Concatenate(name="fusion")(branches)
        x = layers.Dense(dense_units, activation="relu", name="hidden")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        probability = class_output(x, num_classes)
        super().__init__(inputs=inputs, outputs=probability, **kwargs)
        keep_trunk_arguments(self, image_size, filters, dense_units, dropout, trunk)
        self.feature_dim = int(feature_dim)
        self.photometry_dim = int(photometry_dim)
        self.embedding_dim = int(embedding_dim)
        self.num_classes = num_classes


def generator_with_embedding(generator):
    """A model sharing ``generator``'s layers: its inputs -> ``{"features", "embedding"}``,
    the generated vector and the trunk embedding it was made from (one trunk evaluation).

    Example:
        >>> outputs = generator_with_embedding(generator)(inputs)  # doctest: +SKIP
        >>> outputs["embedding"].shape  # doctest: +SKIP
        (N, 128)
    """
    return keras.Model(generator.input,
                       {"features": generator.output,
                        "embedding": generator.get_layer(TRUNK_EMBEDDING).output},
                       name=f"{generator.name}_with_embedding")


@keras.saving.register_keras_serializable(package=PACKAGE)
class PhotometryClassifier(BinaryClassifierDefaults, ConstructorConfig, keras.Model):
    """Standardised in-model photometry -> p(QSO): the photometry head of the deployed model.

    The same dense branch the fusion classifier puts on the photometry, then its own output.
    Trained on the simulator's cutouts, these colours carry over to other renderings better
    than the image trunk (``benchmarks/real_photometry.py``), so :class:`StarQSOClassifier`
    blends its logit with the fusion classifier's (:class:`LogitBlend`).

    Args:
        photometry_dim: length of the ``"photometry"`` input (``AperturePhotometry``'s).
        dense_units: width of the hidden layers.
        dropout: dropout rate before the output.
        input_noise: standard deviation of Gaussian noise added to the standardised photometry
            while training (none at inference), so the head does not lean on colour
            differences that a noisier image blurs. 0: no noise layer.
        num_classes: 2 (p(QSO), (N, 1)) or the number of classes (softmax, (N, K)).

    Example:
        >>> head = PhotometryClassifier(21, dense_units=8)
        >>> head.output_shape
        (None, 1)
    """

    CONFIG_KEYS = ("photometry_dim", "dense_units", "dropout", "input_noise", "num_classes")

    def __init__(self, photometry_dim=21, dense_units=128, dropout=0.2, input_noise=0.0,
                 num_classes=2, **kwargs):
        num_classes = check_num_classes("PhotometryClassifier", num_classes)
        if not isinstance(photometry_dim, int) or photometry_dim < 1:
            raise ValueError(f"PhotometryClassifier photometry_dim must be an integer >= 1. "
                             f"Received: photometry_dim={photometry_dim!r}")
        if (isinstance(input_noise, bool) or not isinstance(input_noise, (int, float))
                or not 0 <= input_noise < 10):
            raise ValueError(f"PhotometryClassifier input_noise must be a number in [0, 10). "
                             f"Received: input_noise={input_noise!r}")
        photometry = keras.Input((photometry_dim,), name="photometry")
        x = photometry
        if input_noise:
            x = layers.GaussianNoise(float(input_noise), name="input_noise")(x)
        x = photometry_branch(x, dense_units)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        probability = class_output(x, num_classes)
        super().__init__(inputs={"photometry": photometry}, outputs=probability, **kwargs)
        self.photometry_dim = int(photometry_dim)
        self.dense_units = int(dense_units)
        self.dropout = float(dropout)
        self.input_noise = float(input_noise)
        self.num_classes = num_classes


@keras.saving.register_keras_serializable(package=PACKAGE)
class StarQSOClassifier(ConstructorConfig, keras.Model):
    """The deployable model: raw nanomaggie cutouts (N, S, S, 5) -> p(QSO) (N, 1).

    Scaling (asinh + per-band statistics from fit time), the aperture photometry (when the
    generator and fusion take it), the generator (with zero noise) and the fusion classifier
    are all inside, so callers pass cutouts exactly as read from FITS (transposed to channels
    last) and nothing else. When the generator and fusion classifier are smaller than
    ``image_size``, they see the centre of the cutout (cropped before the scaling, so the float
    stretch of an int8 export runs on those pixels only) while the photometry measures all of it.

    Args:
        scaling: a :class:`CutoutScaling` layer (or its config).
        generator: a trained :class:`FeatureGenerator` (or its config).
        fusion: a trained :class:`FusionClassifier` (or its config).
        photometry: an :class:`AperturePhotometry` layer (or its config), required when the
            generator or fusion classifier has a photometry input; None otherwise.
        image_size: side of the input cutouts; None for the generator's (no crop). At least
            the generator's, by an even number of pixels.
        metric_head: a trained :class:`~starqso.models.metric.MetricHead` (or its config) on
            the generated vector, or None. It is not part of the p(QSO) graph (nor of the
            TFLite files); :meth:`embedding_model` adds its output.
        photometry_head: a trained :class:`PhotometryClassifier` (or its config) on the
            photometry, or None. With one, p(QSO) is
            ``sigmoid((1 - head_weight) * logit(p_fusion) + head_weight * logit(p_head))``
            (:class:`LogitBlend`).
        head_weight: the photometry head's share of the logit, in [0, 1] (``fit`` chooses it
            on the validation split).

    Example:
        >>> model = StarQSOClassifier(scaling, generator, fusion)  # doctest: +SKIP
        >>> p_qso = model.predict(cutouts_nhwc)  # doctest: +SKIP
    """

    CONFIG_KEYS = ("scaling", "generator", "fusion", "photometry", "image_size", "metric_head",
                   "photometry_head", "head_weight")

    def __init__(self, scaling, generator, fusion, photometry=None, image_size=None,
                 metric_head=None, photometry_head=None, head_weight=0.5, **kwargs):
        scaling = deserialize_submodel(scaling)
        generator = deserialize_submodel(generator)
        fusion = deserialize_submodel(fusion)
        photometry = None if photometry is None else deserialize_submodel(photometry)
        wanted = max(generator.photometry_dim, fusion.photometry_dim)
        if bool(wanted) != (photometry is not None):
            raise ValueError(f"StarQSOClassifier needs an AperturePhotometry layer exactly when "
                             f"the generator or fusion takes photometry. Received: "
                             f"photometry={photometry}, photometry_dim={wanted}")
        trunk = generator.image_size
        size = trunk if image_size is None else int(image_size)
        if size < trunk or (size - trunk) % 2 or fusion.image_size != trunk:
            raise ValueError(f"StarQSOClassifier image_size must be >= the generator's and "
                             f"fusion classifier's (equal) input side, by an even number of "
                             f"pixels. Received: image_size={image_size}, generator "
                             f"{trunk}, fusion {fusion.image_size}")
        embedding_dim = getattr(fusion, "embedding_dim", 0)
        if embedding_dim and embedding_dim != generator.dense_units:
            raise ValueError(f"StarQSOClassifier fusion classifier reads the generator's "
                             f"{generator.dense_units}-d trunk embedding. Received: "
                             f"embedding_dim={embedding_dim}")
        if photometry is not None and photometry.image_size != size:
            raise ValueError(f"StarQSOClassifier photometry must measure the whole "
                             f"{size}-pixel cutout. Received: photometry.image_size="
                             f"{photometry.image_size}")
        if metric_head is not None:
            metric_head = deserialize_submodel(metric_head)
            if (metric_head.feature_dim != generator.feature_dim
                    or metric_head.photometry_dim not in (0, wanted)):
                raise ValueError(f"StarQSOClassifier metric_head must take the generator's "
                                 f"{generator.feature_dim}-d vector (and its photometry). "
                                 f"Received: feature_dim={metric_head.feature_dim}, "
                                 f"photometry_dim={metric_head.photometry_dim}")
        if photometry_head is not None:
            photometry_head = deserialize_submodel(photometry_head)
            measured = 0 if photometry is None else photometry.NUM_FEATURES
            if photometry_head.photometry_dim != measured:
                raise ValueError(f"StarQSOClassifier photometry_head must take the model's "
                                 f"photometry ({measured} features). Received: "
                                 f"photometry_dim={photometry_head.photometry_dim}")
        classes = {"fusion": fusion.num_classes}
        if photometry_head is not None:
            classes["photometry_head"] = photometry_head.num_classes
        if len(set(classes.values())) > 1:
            raise ValueError(f"StarQSOClassifier fusion classifier and photometry head must tell "
                             f"apart the same classes. Received: num_classes={classes}")
        head_weight = float(head_weight)
        if not 0.0 <= head_weight <= 1.0:
            raise ValueError(f"StarQSOClassifier head_weight must be in [0, 1]. Received: "
                             f"head_weight={head_weight}")
        cutout = keras.Input((size, size, 5), name="image")
        outputs = _deployed_graph(cutout, scaling, generator, fusion, photometry, metric_head,
                                  (photometry_head, head_weight))
        super().__init__(inputs={"image": cutout},
                         outputs=outputs[probability_key(fusion.num_classes)], **kwargs)
        self.scaling = scaling
        self.generator = generator
        self.fusion = fusion
        self.photometry = photometry
        self.metric_head = metric_head
        self.photometry_head = photometry_head
        self.head_weight = head_weight
        self.image_size = size

    @property
    def num_classes(self) -> int:
        """The classes the model tells apart: 2 (output p(QSO), (N, 1)) or K (softmax, (N, K))."""
        return self.fusion.num_classes

    def embedding_model(self):
        """A model sharing these layers: raw cutouts -> ``{"p_qso", "vector"[, "metric"]}``
        (``"probabilities"``, (N, K), instead of ``"p_qso"`` for K >= 3 classes).

        ``vector`` is the generated spectral feature vector (zero noise, as deployed);
        ``metric`` the metric-learning head's unit-norm embedding of it, when the model has
        one (``model.metric_loss``). p_qso is the uncalibrated probability of this model.

        Returns:
            a ``keras.Model`` with the input ``{"image": (N, S, S, 5)}``.

        Example:
            >>> outputs = model.embedding_model().predict({"image": cutouts})  # doctest: +SKIP
            >>> outputs["vector"].shape  # doctest: +SKIP
            (N, 128)
        """
        cutout = keras.Input((self.image_size, self.image_size, 5), name="image")
        outputs = _deployed_graph(cutout, self.scaling, self.generator, self.fusion,
                                  self.photometry, self.metric_head,
                                  (self.photometry_head, self.head_weight))
        return keras.Model({"image": cutout}, outputs,
                           name=f"{self.name}_embedding")




#: The key of the class probabilities in the deployed graph's outputs (and the SavedModel's
#: signature): ``"p_qso"`` (N, 1) for a two-class model, ``"probabilities"`` (N, K) for more.
probability_key = output_name


def _deployed_graph(cutout, scaling, generator, fusion, photometry, metric_head,
                    head=(None, 0.5)):
    """The deployed graph on ``cutout``: ``{"p_qso", "vector"[, "metric"]}`` tensors.
    ``head`` is ``(photometry_head or None, head_weight)``."""
    size, trunk = cutout.shape[1], generator.image_size
    centre = (layers.Cropping2D((size - trunk) // 2, name="trunk_crop")(cutout)
              if size > trunk else cutout)
    inputs = {"image": scaling(centre)}
    if photometry is not None:
        inputs["photometry"] = photometry(cutout)
    # From the raw float cutout, not the scaled one, which int8 models quantise: ZeroNoise's
    # float slice would need the whole scaled tensor dequantised.
    noise = ZeroNoise(generator.noise_dim, name="zero_noise")(cutout)
    outputs = deployed_network(inputs, noise, generator, fusion, head)
    if metric_head is not None:
        head_inputs = {"features": outputs["vector"]}
        if metric_head.photometry_dim:
            head_inputs["photometry"] = inputs["photometry"]
        outputs["metric"] = metric_head(head_inputs)
    return outputs


def deployed_network(inputs, noise, generator, fusion, head=(None, 0.5)):
    """The networks of the deployed graph behind its float preprocessing.

    Args:
        inputs: ``{"image": scaled centre[, "photometry": standardised photometry]}`` tensors.
        noise: the generator's noise tensor (zeros, as deployed).
        generator, fusion: the trained generator and fusion classifier.
        head: ``(photometry_head or None, head_weight)``.

    Returns:
        ``{"p_qso", "vector"}`` tensors (:func:`probability_key`: ``"probabilities"`` for a
        model of three or more classes).

    Example:
        >>> outputs = deployed_network(inputs, noise, generator, fusion)  # doctest: +SKIP
    """
    if getattr(fusion, "embedding_dim", 0):  # one trunk for both (model.shared_trunk)
        tapped = generator_with_embedding(generator)(generator.generator_inputs(inputs, noise))
        features = tapped["features"]
        fusion_inputs = {"embedding": tapped["embedding"], "features": features}
    else:
        features = generator(generator.generator_inputs(inputs, noise))
        fusion_inputs = {"image": inputs["image"], "features": features}
    if fusion.photometry_dim:
        fusion_inputs["photometry"] = inputs["photometry"]
    p_qso = fusion(fusion_inputs)
    photometry_head, head_weight = head
    if photometry_head is not None and head_weight > 0:
        p_head = photometry_head({"photometry": inputs["photometry"]})
        p_qso = (p_head if head_weight >= 1 else
                 LogitBlend(head_weight, name="logit_blend")([p_qso, p_head]))
    return {probability_key(fusion.num_classes): p_qso, "vector": features}


__all__ = [
    "AperturePhotometry",
    "CutoutScaling",
    "FusionClassifier",
    "ImageClassifier",
    "PhotometryClassifier",
    "StarQSOClassifier",
    "TRUNK_EMBEDDING",
    "deployed_network",
    "generator_with_embedding",
    "probability_key",
]
