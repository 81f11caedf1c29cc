"""The ``keras.applications`` image trunks, built for 5 bands, and their weights files.

``resnet50``, ``densenet121``, ``vgg16``, ``xception``, ``efficientnetb0``
(:data:`APPLICATION_TRUNKS`): :func:`application_trunk` builds the architecture without its
top, with random weights, for 5-band cutouts (one nested sub-model, average pooled);
:func:`load_trunk_weights` loads a user's weights file into every such trunk of a model, a
3-band ImageNet file too. :func:`starqso.models.trunks.image_trunk_features` puts them in a
model.
"""

from __future__ import annotations

import os
import warnings

import keras
import numpy as np
from keras import layers

from starqso.errors import InputError

#: The ``keras.applications`` trunks and the smallest input side each accepts (Keras'
#: ``min_size``); smaller cutouts are resized up to it inside the model.
APPLICATION_TRUNKS = {"resnet50": 32, "densenet121": 32, "vgg16": 32, "xception": 71,
                      "efficientnetb0": 32}
_BUILDERS = {"resnet50": "ResNet50", "densenet121": "DenseNet121", "vgg16": "VGG16",
             "xception": "Xception", "efficientnetb0": "EfficientNetB0"}


def application_trunk(trunk, side, bands=5, name=None, stock=False):
    """A ``keras.applications`` architecture without its top, random weights, average pooled.

    Args:
        trunk: a key of :data:`APPLICATION_TRUNKS`.
        side: input side in pixels (at least the architecture's minimum).
        bands: input channels (5; 3 for a twin that reads an ImageNet weights file).
        name: the sub-model's name (Keras' default for the architecture when None).
        stock: keep EfficientNetB0's input preprocessing (a twin for files saved from the
            stock Keras model); the trunks never do.

    Returns:
        a functional ``keras.Model`` (batch, side, side, bands) -> (batch, features).

    Example:
        >>> application_trunk("vgg16", 32, name="trunk_vgg16").output_shape
        (None, 512)
    """
    if trunk not in APPLICATION_TRUNKS:
        raise ValueError(f"trunk must be one of {', '.join(APPLICATION_TRUNKS)}. "
                         f"Received: trunk={trunk!r}")
    builder = getattr(keras.applications, _BUILDERS[trunk])
    kwargs = {"name": name} if name else {}
    with warnings.catch_warnings():
        # "This model usually expects 1 or 3 input channels": 5 bands are the point here.
        warnings.filterwarnings("ignore", message=".*expects 1 or 3 input channels.*",
                                category=UserWarning)
        model = builder(include_top=False, weights=None, input_shape=(side, side, bands),
                        pooling="avg", **kwargs)
    if trunk != "efficientnetb0" or stock:
        return model
    # Keras 3's EfficientNet starts with Rescaling(1/255) and a Normalization layer (identity
    # while never adapted, as here; ImageNet's RGB statistics when its file is loaded), with
    # no switch to leave them out (tf.keras' include_preprocessing is gone). Our cutouts are
    # already asinh-stretched and standardised: the 1/255 would shrink them 255-fold into the
    # first convolution and (from a 3-band file) the Normalization would carry 3-channel
    # statistics the 5 bands cannot use. So the graph is cloned onto a fresh input with both
    # layers called as identities: the same architecture and layer names otherwise, a plain
    # functional model in .keras files, two fewer element-wise ops in the TFLite export. The
    # clone makes new layers (fresh random weights, as weights=None gives anyway) rather than
    # reusing the stock model's: reused layers would keep a node in the discarded graph, and
    # `trunk.get_layer(...).output` would point there.
    def call(layer, *args, **kwargs):
        if isinstance(layer, (layers.Rescaling, layers.Normalization)):
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=keras.Input((side, side, bands), name=f"{model.name}_input"),
        call_function=call)


def load_trunk_weights(model, path):
    """Load a weights file into every ``keras.applications`` trunk nested in ``model``.

    The file holds the weights of the trunk's architecture (no top), either

    * for 5 bands: a Keras ``.weights.h5`` file, e.g. ``trunk.save_weights(...)`` of a trunk
      sub-model (``model.get_layer("trunk_resnet50")``), or
    * for 3 bands: e.g. Keras' ImageNet ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
      (or a ``.weights.h5`` of a 3-band model). Every weight is copied as it is except the first
      convolution's kernel, whose 3 input channels are averaged and repeated over the 5 bands,
      times 3/5, so that a flat input gives the response it gave in 3 bands.

    EfficientNetB0's input Rescaling and Normalization, which the trunk leaves out
    (:func:`application_trunk`), are not copied (ImageNet's are RGB pixel statistics). Note
    that ImageNet weights were trained on 0-255 (or 0-1) RGB pixels; the trunk sees
    standardised asinh cutouts, so they are a starting point to train on, not features to use
    as they are.

    Args:
        model: a Keras model holding one or more trunk sub-models named ``*_{trunk}``
            (:data:`APPLICATION_TRUNKS`), at any depth.
        path: the weights file (``.weights.h5``, ``.h5`` or ``.hdf5``).

    Returns:
        list of str: one log line per trunk loaded.

    Raises:
        InputError: the model has no such trunk, or the file does not exist, is not readable,
            or does not hold weights of the trunk's architecture.

    Example:
        >>> load_trunk_weights(generator, "resnet50_notop.h5")  # doctest: +SKIP
        ['trunk weights resnet50_notop.h5 (3-band resnet50, ...) -> generator/trunk_resnet50']
    """
    trunks = _application_submodels(model)
    if not trunks:
        raise InputError(f"trunk weights need a keras.applications trunk "
                         f"({', '.join(APPLICATION_TRUNKS)}) in the model; this model has none. "
                         f"Received: model={getattr(model, 'name', model)!r}")
    path = os.fspath(path)
    _check_weights_file(path)
    twins = {}
    messages = []
    for where, trunk, architecture in trunks:
        if architecture not in twins:
            twins[architecture] = _loaded_twin(architecture, path)
        twin, bands = twins[architecture]
        _copy_twin_weights(twin, trunk, bands)
        how = (f"3-band {architecture}, first convolution spread over the 5 bands"
               if bands == 3 else f"5-band {architecture}")
        messages.append(f"trunk weights {path} ({how}) -> {where}")
    return messages


def _application_submodels(model):
    """(path, sub-model, architecture) of every keras.applications trunk in ``model`` (the
    model itself included), found by name (``{prefix}_{trunk}``) at any depth."""
    found, seen = [], set()

    def visit(layer, where):
        if id(layer) in seen or not isinstance(layer, keras.Model):
            return
        seen.add(id(layer))
        architecture = next((trunk for trunk in APPLICATION_TRUNKS
                             if layer.name.endswith(f"_{trunk}")), None)
        if architecture is not None:
            found.append((where, layer, architecture))
            return
        for child in layer.layers:
            visit(child, f"{where}/{child.name}")

    visit(model, getattr(model, "name", ""))
    return found


def _check_weights_file(path):
    expected = "expected a Keras weights file (.weights.h5, or .h5 such as keras' ImageNet " \
               "*_notop.h5)"
    if not os.path.exists(path):
        raise InputError(f"trunk weights file {path} does not exist; {expected}. "
                         f"Received: path={path}")
    if not os.path.isfile(path):
        raise InputError(f"trunk weights file {path} is not a file; {expected}. "
                         f"Received: path={path}")
    try:
        with open(path, "rb") as handle:
            signature = handle.read(8)
    except OSError as err:
        raise InputError(f"trunk weights file {path} is not readable "
                         f"({err.strerror or err}); {expected}. Received: path={path}") from None
    # Keras picks its reader by the name, so a weights file of another name would not load.
    if not path.lower().endswith((".h5", ".hdf5")) or signature != b"\x89HDF\r\n\x1a\n":
        raise InputError(f"trunk weights file {path} is not an HDF5 weights file named "
                         f"*.h5; {expected}. Received: path={path}")


def _loaded_twin(architecture, path):
    """A model of ``architecture`` holding the file's weights, and its input bands (5 or 3).

    The file is tried on fresh twins (5- and 3-band, and for EfficientNetB0 with and without
    Keras' input preprocessing), never on the user's model, so a file that does not fit
    leaves the model as it was.
    """
    side = APPLICATION_TRUNKS[architecture]
    order = (5, 3) if path.lower().endswith(".weights.h5") else (3, 5)
    stocks = (False, True) if architecture == "efficientnetb0" else (False,)
    failures = []
    for bands in order:
        for stock in stocks:
            twin = application_trunk(architecture, side, bands, stock=stock)
            try:
                with warnings.catch_warnings():
                    # Keras warns per skipped container while it fails; the error says it all.
                    warnings.simplefilter("ignore")
                    twin.load_weights(path)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
                failures.append(str(err).strip().splitlines()[0] if str(err).strip()
                                else type(err).__name__)
                continue
            return twin, bands
    reason = failures[0] if len(failures[0]) <= 160 else failures[0][:157] + "..."
    raise InputError(f"trunk weights file {path} does not hold {architecture} weights "
                     f"({reason}); expected weights of keras.applications."
                     f"{_BUILDERS[architecture]} without its top, for 5 bands (.weights.h5) "
                     f"or 3 bands (e.g. keras' ImageNet *_notop.h5). Received: path={path}")


def _weighted_layers(model):
    # EfficientNet's input preprocessing is not part of a trunk (application_trunk).
    return [layer for layer in model.layers if layer.weights
            and not isinstance(layer, (layers.Rescaling, layers.Normalization))]


def _copy_twin_weights(twin, trunk, bands):
    """Copy every weight of ``twin`` into ``trunk`` (same architecture), spreading a 3-band
    first convolution over the 5 bands."""
    sources, targets = _weighted_layers(twin), _weighted_layers(trunk)
    if len(sources) != len(targets):
        raise ValueError(f"{trunk.name} and its twin {twin.name} differ in layers. Received: "
                         f"{len(targets)} and {len(sources)} layers with weights")
    # Everything is checked before anything is assigned: no half-loaded trunk.
    assignments = []
    for position, (source, target) in enumerate(zip(sources, targets, strict=True)):
        values = source.get_weights()
        shapes = [tuple(w.shape) for w in target.weights]
        if position == 0 and bands == 3:
            kernel = values[0]
            # mean over RGB, repeated: a flat 5-band input sums 5 x 3/5 x mean = 3 x mean,
            # what the flat 3-band input gave.
            values[0] = np.repeat(kernel.mean(axis=2, keepdims=True), 5, axis=2) * (3.0 / 5.0)
        if type(source) is not type(target) or [v.shape for v in values] != shapes:
            raise ValueError(f"{trunk.name} layer {target.name} does not match {source.name} "
                             f"of its twin. Received: shapes {shapes} and "
                             f"{[v.shape for v in values]}")
        assignments.append((target, values))
    for target, values in assignments:
        target.set_weights(values)
