"""Simulated objects as :class:`~starqso.data.ObjectArrays`: one worker's chunk of a
simulation, and the file name of a cached simulation (no TensorFlow)."""

from __future__ import annotations

import os

from starqso.errors import InputError
from starqso.preprocessing.objects import prepare_object
from starqso.schema import LABEL_CODES
from starqso.simulate.survey import simulate_object


def simulation_cache_path(folder, num_objects, seed, image_size, cutout_size, qso_fraction,
                          kwargs) -> str:
    """The cache file of :meth:`ObjectArrays.from_simulation_cache
    <starqso.data.ObjectArrays.from_simulation_cache>` in ``folder`` (created if needed): its
    name hashes the arguments and the simulator's code and resources."""
    import hashlib
    import importlib.resources
    import json

    key = [num_objects, seed, image_size, cutout_size, qso_fraction]
    backgrounds = kwargs.get("backgrounds")
    if backgrounds is not None:  # only then, so a plain simulation keeps its cache name
        key += [backgrounds.sha256, backgrounds.fraction]
    reddening = kwargs.get("reddening")
    if reddening is not None and reddening.fraction > 0:  # likewise
        key += ["reddening", reddening.fraction, reddening.max_ebv]
    crowding = kwargs.get("crowding")
    if crowding is not None and crowding.fraction > 0:  # likewise
        key += ["crowding", crowding.fraction, crowding.max_density]
    brightness = kwargs.get("brightness")
    if brightness is not None and brightness.fraction > 0:  # likewise
        key += ["brightness", brightness.fraction]
    if brightness is not None and brightness.high_z_fraction > 0:  # likewise
        key += ["high_z_magnitudes", brightness.high_z_fraction]
    if kwargs.get("galaxy_fraction", 0) > 0:  # likewise
        key += ["galaxies", kwargs["galaxy_fraction"]]
    digest = hashlib.sha256(json.dumps(key).encode())
    package = importlib.resources.files("starqso")
    for part in ("simulate", "resources"):
        for item in sorted(package.joinpath(part).iterdir(), key=lambda item: item.name):
            if item.is_file() and not item.name.endswith(".pyc"):
                digest.update(item.name.encode() + item.read_bytes())
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"simulation-{digest.hexdigest()[:16]}.npz")


def simulate_chunk(task):
    """Objects ``indices`` of a simulation as arrays (a worker of ``from_simulation``), of the
    task's class ``cls`` (:class:`~starqso.data.ObjectArrays`)."""
    (cls, indices, seed, image_size, cutout_size, qso_fraction, id_width, source, reddening,
     crowding, brightness, galaxy_fraction) = task
    # Each worker reads the backgrounds once (BackgroundSource.load is cached).
    backgrounds = None if source is None else source.load(cutout_size)
    fraction = 0.0 if source is None else source.fraction
    objects = [simulate_object(index, seed, cutout_size, qso_fraction, id_width=id_width,
                               backgrounds=backgrounds, background_fraction=fraction,
                               reddening=reddening, crowding=crowding,
                               brightness=brightness, galaxy_fraction=galaxy_fraction)
               for index in indices]
    arrays = cls.empty([obj.id for obj in objects], image_size)
    for row, obj in enumerate(objects):
        spectrum = obj.spectrum
        prepared = prepare_object(
            obj.cutout, image_size, (spectrum["wavelength"], spectrum["flux"], spectrum["ivar"],
                                     spectrum["and_mask"] != 0),
            source=f"simulated object {obj.id} (seed {seed})")
        if prepared.spectrum_error:
            raise InputError(prepared.spectrum_error)
        arrays.images[row] = prepared.image
        arrays.spectra[row] = prepared.spectrum
        arrays.labels[row] = LABEL_CODES[obj.label]
        arrays.redshift[row] = obj.redshift
        arrays.mags[row] = obj.mags
    arrays.has_spectrum[:] = True
    return arrays
