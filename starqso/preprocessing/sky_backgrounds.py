"""Real blank sky from a user's survey frames: detection, PSF and noise per band, blank cutouts.

What ``starqso skies`` does, field by field (:func:`make_sky_backgrounds`):

1. read and check the five frames (:mod:`starqso.io.frames`);
2. per band, estimate the sky with photutils' sigma-clipped ``Background2D`` (64-pixel boxes,
   so gradients and scattered light are followed), smooth the sky-subtracted frame with a
   Gaussian of 3 pixels FWHM and detect sources at ``detect_sigma`` (5) times the smoothed
   noise, at least 5 connected pixels (as SExtractor/sep do with their default filter);
3. per band, measure the sky sigma (sigma-clipped pixel noise with the detections masked) and
   the PSF FWHM: an elliptical Gaussian fitted to each isolated, bright (peak S/N >= 20),
   unsaturated (no flat top) and round source, the median of the stellar locus;
4. draw cutout centres at random over the r frame and keep those with no detected pixel, in any
   band, within ``blank_radius_px`` (4) of the centre, wholly inside every frame and free of
   NaN, and not overlapping an already kept cutout (so each pixel's noise is used once).

The cutouts keep the frames' own pixels (no sky subtracted), so injected sources sit on the
sky a user's own cutouts of the same frames show. photutils is needed (``pip install
"starqso[train]"``); it is imported only here.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

import numpy as np

from starqso import __version__
from starqso._util.locking import exclusive_lock
from starqso.errors import InputError
from starqso.io.frames import frame_paths, group_fields, read_field
from starqso.io.skies import SkyBackgrounds, check_output, read_skies, write_skies
from starqso.schema import BANDS, PIXEL_SCALE_ARCSEC

__all__ = ["BandMeasurement", "make_sky_backgrounds", "make_sky_file", "measure_band",
           "require_photutils"]

#: FWHM (pixels) of the Gaussian the frames are smoothed with before detection: near the
#: PSF of good seeing (1.2"), so faint point sources are found at their best S/N.
DETECTION_FWHM_PX = 3.0
DETECTION_MIN_PIXELS = 5
BACKGROUND_BOX_PX = 64
# PSF stars: peak at least this many sky sigmas, no other detection within the stamp.
PSF_MIN_PEAK_SNR = 20.0
PSF_STAMP_HALF = 10
PSF_MAX_STARS = 60
# A fitted Gaussian whose amplitude exceeds the highest pixel by this factor is flat-topped:
# a saturated star (or a clipped one), left out.
PSF_FLAT_TOP = 1.15
PSF_MAX_ELLIPTICITY = 0.25
# Candidate centres drawn per field, at least, to choose the blank cutouts from.
MIN_CANDIDATES = 20000


def require_photutils(what: str = "starqso skies") -> None:
    """Make sure photutils can be imported, else one line naming the extra to install.

    Example:
        >>> require_photutils()  # doctest: +SKIP
    """
    from starqso._util.extras import missing_module

    if missing_module("photutils") is not None:
        raise InputError(f"{what} needs photutils, which the light install leaves out: pip "
                         f"install \"starqso[train]\" (or pip install photutils). Received: no "
                         f"module named 'photutils'")


@dataclass
class BandMeasurement:
    """What one band's frame gives.

    Attributes:
        detected: bool ``(H, W)``: pixels of detected sources (and non-finite pixels).
        distance: float ``(H, W)``: distance (pixels) of each pixel to the nearest detected one.
        sky_sigma: pixel noise (nanomaggies), sigma-clipped with the detections masked.
        sky_level: median sky level left in the frame (nanomaggies).
        psf_fwhm_arcsec: the PSF FWHM, NaN when no star qualified.
        psf_stars: how many stars it is the median of.
        sources: the number of detected sources.
    """

    detected: np.ndarray
    distance: np.ndarray
    sky_sigma: float
    sky_level: float
    psf_fwhm_arcsec: float
    psf_stars: int
    sources: int


def measure_band(data, detect_sigma=5.0) -> BandMeasurement:
    """Detect sources in one frame and measure its sky sigma and PSF FWHM.

    Args:
        data: float ``(H, W)`` nanomaggies, NaN where not finite.
        detect_sigma: detection threshold in sigmas of the smoothed sky noise.

    Returns:
        :class:`BandMeasurement`.

    Example:
        >>> measure_band(frame.data).psf_fwhm_arcsec  # doctest: +SKIP
        1.21
    """
    from astropy.stats import SigmaClip, sigma_clipped_stats
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import detect_sources, make_2dgaussian_kernel
    from scipy import ndimage

    invalid = ~np.isfinite(data)
    box = int(max(8, min(BACKGROUND_BOX_PX, min(data.shape) // 4)))
    background = Background2D(data, box, mask=invalid, filter_size=(3, 3),
                              sigma_clip=SigmaClip(sigma=3.0), bkg_estimator=MedianBackground())
    subtracted = np.where(invalid, 0.0, data - background.background)
    kernel = make_2dgaussian_kernel(DETECTION_FWHM_PX, size=2 * int(DETECTION_FWHM_PX) + 1).array
    smoothed = ndimage.convolve(subtracted, kernel / kernel.sum(), mode="nearest")
    # White pixel noise sigma becomes sigma * sqrt(sum k^2) after smoothing with kernel k.
    noise = np.asarray(background.background_rms) * np.sqrt(((kernel / kernel.sum()) ** 2).sum())
    segments = detect_sources(smoothed, detect_sigma * noise, DETECTION_MIN_PIXELS, mask=invalid)
    labels = np.zeros(data.shape, np.int32) if segments is None else segments.data
    detected = (labels > 0) | invalid
    distance = ndimage.distance_transform_edt(~detected) if not detected.all() \
        else np.zeros(data.shape)
    # Sources' outskirts lie below the detection threshold: mask 3 pixels around them too.
    masked = ndimage.binary_dilation(detected, iterations=3) | invalid
    if masked.all():
        raise InputError("a frame is covered by sources and non-finite pixels; expected some "
                         "empty sky")
    _, _, sky_sigma = sigma_clipped_stats(subtracted, mask=masked, sigma=3.0, maxiters=10)
    fwhm_px, stars = _psf_fwhm(subtracted, labels, invalid, float(sky_sigma))
    return BandMeasurement(detected=detected, distance=distance, sky_sigma=float(sky_sigma),
                           sky_level=float(np.median(background.background)),
                           psf_fwhm_arcsec=fwhm_px * PIXEL_SCALE_ARCSEC, psf_stars=stars,
                           sources=0 if segments is None else len(segments.labels))


def _psf_fwhm(image, labels, invalid, sigma):
    """The median FWHM (pixels) of the isolated bright unsaturated round sources, and their
    number; NaN and 0 when there are none."""
    from scipy import ndimage

    count = int(labels.max())
    if count == 0 or not sigma > 0:
        return float("nan"), 0
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(image, labels, index)
    positions = ndimage.maximum_position(image, labels, index)
    order = np.argsort(-np.asarray(peaks))
    half = PSF_STAMP_HALF
    height, width = image.shape
    found = []
    for number in order:
        if peaks[number] < PSF_MIN_PEAK_SNR * sigma or len(found) >= PSF_MAX_STARS:
            break
        y, x = positions[number]
        if y < half or x < half or y + half >= height or x + half >= width:
            continue
        window = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
        stamp_labels = labels[window]
        if np.any((stamp_labels > 0) & (stamp_labels != number + 1)) or invalid[window].any():
            continue  # a neighbour or a gap: not isolated
        fwhm = _gaussian_fwhm(image[window], sigma)
        if fwhm is not None:
            found.append(fwhm)
    if not found:
        return float("nan"), 0
    values = np.array(found)
    # The stellar locus: galaxies and blends lie above it; clip them iteratively.
    keep = np.ones(len(values), bool)
    for _ in range(5):
        centre = np.median(values[keep])
        spread = max(1.4826 * np.median(np.abs(values[keep] - centre)), 0.03 * centre)
        new = np.abs(values - centre) <= 2.5 * spread
        if new.sum() == 0 or (new == keep).all():
            break
        keep = new
    return float(np.median(values[keep])), int(keep.sum())


def _gaussian_fwhm(stamp, sigma):
    """FWHM (pixels) of an elliptical Gaussian fitted to ``stamp``; None for a source that is
    flat-topped, elongated, narrower than a pixel, or not fitted."""
    from scipy.optimize import least_squares

    size = stamp.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2
    peak = float(stamp.max())

    def model(params):
        amplitude, x0, y0, sx, sy, theta, offset = params
        cos, sin = np.cos(theta), np.sin(theta)
        u = cos * (xx - x0) + sin * (yy - y0)
        v = -sin * (xx - x0) + cos * (yy - y0)
        return amplitude * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) + offset

    start = [peak, centre, centre, 1.5, 1.5, 0.0, 0.0]
    bounds = ([0, centre - 3, centre - 3, 0.3, 0.3, -np.pi, -np.inf],
              [np.inf, centre + 3, centre + 3, size, size, np.pi, np.inf])
    try:
        fit = least_squares(lambda p: ((model(p) - stamp) / sigma).ravel(), start,
                            bounds=bounds, x_scale="jac", max_nfev=200)
    except (ValueError, np.linalg.LinAlgError):
        return None
    amplitude, _, _, sx, sy, _, _ = fit.x
    if not fit.success or amplitude > PSF_FLAT_TOP * peak:
        return None
    if 1 - min(sx, sy) / max(sx, sy) > PSF_MAX_ELLIPTICITY:
        return None
    fwhm = 2 * np.sqrt(2 * np.log(2)) * np.sqrt(sx * sy)
    return float(fwhm) if fwhm >= 1.0 else None


def _blank_centres(field, measurements, count, size, radius, rng):
    """r-frame centres of up to ``count`` non-overlapping blank cutouts, and their cutouts."""
    height, width = field.reference.data.shape
    half = (size - 1) / 2
    tries = max(MIN_CANDIDATES, 50 * count)
    # Whole-pixel cutout corners, so that the cutout's centre is corner + (size-1)/2.
    x0 = rng.integers(0, max(width - size + 1, 1), tries).astype(np.float64)
    y0 = rng.integers(0, max(height - size + 1, 1), tries).astype(np.float64)
    x, y = x0 + half, y0 + half
    ok = field.inside_all(x, y, size)
    x, y = x[ok], y[ok]
    positions = field.band_positions(x, y)
    for number, measurement in enumerate(measurements):
        bx, by = positions[number]
        nx, ny = np.round(bx).astype(np.int64), np.round(by).astype(np.int64)
        band_height, band_width = measurement.distance.shape
        inside = (nx >= 0) & (ny >= 0) & (nx < band_width) & (ny < band_height)
        distance = np.zeros(len(x))
        distance[inside] = measurement.distance[ny[inside], nx[inside]]
        # The centre's distance to a detected pixel is at least the nearest pixel's distance
        # less the gap between centre and that pixel.
        blank = inside & (distance - np.hypot(bx - nx, by - ny) > radius)
        x, y, positions = x[blank], y[blank], positions[:, :, blank]
    chosen_x, chosen_y, cutouts = [], [], []
    for cx, cy in zip(x, y, strict=False):
        if len(chosen_x) >= count:
            break
        if chosen_x and np.any((np.abs(np.array(chosen_x) - cx) < size)
                               & (np.abs(np.array(chosen_y) - cy) < size)):
            continue
        cutout = field.cut([cx], [cy], size)[0]
        if not np.isfinite(cutout).all():
            continue
        chosen_x.append(cx)
        chosen_y.append(cy)
        cutouts.append(cutout)
    images = np.stack(cutouts) if cutouts else np.zeros((0, len(BANDS), size, size), np.float32)
    return np.array(chosen_x), np.array(chosen_y), images


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_sky_backgrounds(frames, count=200, size=48, seed=0, detect_sigma=5.0,
                         blank_radius_px=4.0, log=None, command=None):
    """Blank-sky cutouts and per-field PSF FWHM and sky sigma from survey frames.

    Args:
        frames: frame files and/or folders of them (:func:`starqso.io.frames.frame_paths`):
            the five bands of one or more fields.
        count: blank cutouts per field, at most (fewer where a field has less blank sky).
        size: cutout side in pixels.
        seed: seed of the random centres.
        detect_sigma: detection threshold (sigmas of the smoothed sky noise).
        blank_radius_px: no detected pixel, in any band, within this distance of a centre.
        log: optional callable for one line per field.
        command: the command line recorded in the product.

    Returns:
        :class:`starqso.io.skies.SkyBackgrounds`.

    Raises:
        InputError: bad frames (:func:`starqso.io.frames.read_field`), bad settings, or no
            blank cutout in any field.

    Example:
        >>> skies = make_sky_backgrounds(["frames/"], count=100)  # doctest: +SKIP
    """
    if count < 1:
        raise InputError(f"--count must be at least 1. Received: {count}")
    if size < 16:
        raise InputError(f"--size must be at least 16 pixels. Received: {size}")
    if not detect_sigma > 0 or not blank_radius_px >= 0:
        raise InputError(f"--detect-sigma must be > 0 and --blank-radius >= 0. Received: "
                         f"{detect_sigma}, {blank_radius_px}")
    require_photutils()
    paths = frame_paths(frames)
    if len(paths) < len(BANDS):
        raise InputError(f"starqso skies needs the {len(BANDS)} frames of a field (one per band "
                         f"{' '.join(BANDS)}). Received: {len(paths)} file"
                         f"{'s' if len(paths) != 1 else ''}: {' '.join(paths)}")
    groups = group_fields(paths)
    # Every field is read and checked before any is measured: a bad frame fails at once.
    for name, members in groups:
        if len(members) < len(BANDS):
            read_field(name, members)  # names the missing bands
    rng = np.random.default_rng(seed)
    per_cutout = {name: [] for name in ("images", "field", "x", "y", "ra", "dec")}
    per_field = {name: [] for name in ("fields", "psf_fwhm_arcsec", "psf_stars", "sky_sigma",
                                       "sky_level", "frame_files", "frame_sha256", "alignment",
                                       "centre_ra", "centre_dec")}
    for name, members in groups:
        started = time.time()
        field = read_field(name, members)
        measurements = [measure_band(frame.data, detect_sigma) for frame in field.frames]
        x, y, images = _blank_centres(field, measurements, count, size, blank_radius_px, rng)
        ra, dec = field.reference.wcs.all_pix2world(x, y, 0) if len(x) else ([], [])
        per_cutout["images"].append(images)
        per_cutout["field"] += [name] * len(x)
        per_cutout["x"].append(x)
        per_cutout["y"].append(y)
        per_cutout["ra"].append(np.asarray(ra, np.float64))
        per_cutout["dec"].append(np.asarray(dec, np.float64))
        height, width = field.reference.data.shape
        centre = field.reference.wcs.all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)[0]
        per_field["fields"].append(name)
        per_field["psf_fwhm_arcsec"].append([m.psf_fwhm_arcsec for m in measurements])
        per_field["psf_stars"].append([m.psf_stars for m in measurements])
        per_field["sky_sigma"].append([m.sky_sigma for m in measurements])
        per_field["sky_level"].append([m.sky_level for m in measurements])
        per_field["frame_files"].append([os.path.abspath(f.path) for f in field.frames])
        per_field["frame_sha256"].append([_sha256(f.path) for f in field.frames])
        per_field["alignment"].append(list(field.alignment))
        per_field["centre_ra"].append(float(centre[0]))
        per_field["centre_dec"].append(float(centre[1]))
        if log is not None:
            fwhm = " ".join(f"{band} {m.psf_fwhm_arcsec:.2f}\"" for band, m
                            in zip(BANDS, measurements, strict=False))
            log(f"field {name}: {len(x)} blank cutouts of {size}x{size}, PSF FWHM {fwhm}, "
                f"{measurements[2].sources} sources in r ({time.time() - started:.1f} s)")
    total = sum(len(images) for images in per_cutout["images"])
    if total == 0:
        raise InputError(f"no blank cutout of {size}x{size} pixels found in "
                         f"{', '.join(per_field['fields'])}: every candidate centre had a source "
                         f"within {blank_radius_px:g} px or ran off a frame; expected frames "
                         f"larger than the cutouts with some empty sky")
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return SkyBackgrounds(
        images=np.concatenate(per_cutout["images"]).astype(np.float32),
        field=np.asarray(per_cutout["field"], dtype=str),
        x=np.concatenate(per_cutout["x"]), y=np.concatenate(per_cutout["y"]),
        ra=np.concatenate(per_cutout["ra"]), dec=np.concatenate(per_cutout["dec"]),
        fields=np.asarray(per_field["fields"], dtype=str),
        psf_fwhm_arcsec=np.asarray(per_field["psf_fwhm_arcsec"], np.float64),
        psf_stars=np.asarray(per_field["psf_stars"], np.int64),
        sky_sigma=np.asarray(per_field["sky_sigma"], np.float64),
        sky_level=np.asarray(per_field["sky_level"], np.float64),
        frame_files=np.asarray(per_field["frame_files"], dtype=str),
        frame_sha256=np.asarray(per_field["frame_sha256"], dtype=str),
        alignment=np.asarray(per_field["alignment"], dtype=str),
        centre_ra=np.asarray(per_field["centre_ra"]),
        centre_dec=np.asarray(per_field["centre_dec"]),
        detect_sigma=float(detect_sigma), blank_radius_px=float(blank_radius_px),
        created=created, command=command or "", starqso_version=__version__)


def make_sky_file(frames, out, log=None, **settings):
    """:func:`make_sky_backgrounds`, written to ``out`` and read back as a check.

    ``out`` must end in ``.npz`` and be new or an earlier sky-background file (never an input,
    a folder, a link or a user's file); one run at a time holds its lock, and the file appears
    whole or not at all.

    Args:
        frames: as :func:`make_sky_backgrounds`.
        out: the ``.npz`` to write.
        log: optional callable for progress lines.
        settings: the other arguments of :func:`make_sky_backgrounds`.

    Returns:
        The :class:`~starqso.io.skies.SkyBackgrounds` read back from ``out``.

    Example:
        >>> make_sky_file(["frames/"], "skies.npz", count=100)  # doctest: +SKIP
    """
    out = check_output(out, frame_paths(frames))
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise InputError(f"--out folder does not exist: {folder} (for file {out})")
    skies = make_sky_backgrounds(frames, log=log, **settings)
    with exclusive_lock(out):
        check_output(out, frame_paths(frames))  # again under the lock
        write_skies(out, skies)
    return read_skies(out)
