"""Header cards of a five-band cutout: what :mod:`starqso.io.cutouts` reads and checks.

The cards a cutout file carries are compared with the survey (:data:`starqso.schema.SDSS`):
``BUNIT``, ``BANDS``, ``PIXSCALE``, the pixel scale a celestial WCS gives, the
``BAND``/``FILTER`` card of a one-band image, and, for an object read from one image per band,
whether the bands show the same sky. Cards passed to :func:`starqso.io.write_cutout` are
validated here too. Nothing here reads pixels.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping

import numpy as np
from astropy.io import fits

from starqso.errors import InputError
from starqso.schema import BANDS, PIXEL_SCALE_TOLERANCE, SDSS, Survey

# Cards that describe the FITS structure itself: astropy writes them, so they are neither
# returned in Cutout.header nor accepted from the caller.
_STRUCTURAL_KEYWORD = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|BSCALE|BZERO|BLANK|"
    r"CHECKSUM|DATASUM|EXTNAME|EXTVER|EXTLEVEL)$"
)
_FITS_KEYWORD = re.compile(r"^[A-Z0-9_-]{1,8}$")


def header_cards(header: fits.Header) -> dict:
    """A header's cards as a plain dict, as :attr:`~starqso.io.Cutout.header` holds them
    (structural, commentary and HIERARCH cards left out)."""
    cards = {}
    for keyword, value in header.items():
        # HIERARCH and commentary cards are skipped so the dict can be written back as is.
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            continue
        if _STRUCTURAL_KEYWORD.match(keyword):
            continue
        if isinstance(value, (bool, int, float, str)):
            cards[keyword] = value
    return cards


def check_cube_shape(shape: tuple, where: str) -> None:
    """Refuse a shape that is not (5, H, W) with H, W >= 1."""
    expected = "cutout must have 5 bands (ugriz) as (5, H, W)"
    if len(shape) != 3:
        raise InputError(f"{expected}. Received: {len(shape)}-D shape={shape} {where}")
    if shape[0] != len(BANDS):
        hint = ""
        if shape[-1] == len(BANDS):
            hint = " (looks like (H, W, 5): put the band axis first, e.g. np.moveaxis(data, -1, 0))"
        raise InputError(f"{expected}. Received: shape={shape}{hint} {where}")
    if shape[1] == 0 or shape[2] == 0:
        raise InputError(f"{expected} with H, W >= 1. Received: shape={shape} {where}")


def check_unit_and_bands(cards: Mapping, where: str, survey: Survey = SDSS) -> None:
    """Refuse header cards that contradict ``survey``: BUNIT, BANDS, PIXSCALE and the pixel
    scale of a celestial WCS. A card that is absent passes."""
    unit = cards.get("BUNIT")
    if unit is not None and not survey.accepts_unit(unit):
        raise InputError(
            f"cutout pixels must be in {survey.name} units, {survey.unit} "
            f"(BUNIT={survey.unit!r}). Received: BUNIT={unit!r} {where}"
        )
    bands = cards.get("BANDS")
    if bands is not None and sorted(str(bands).strip().lower()) != sorted("".join(survey.bands)):
        raise InputError(
            f"cutout bands must be {', '.join(survey.bands)}, once each "
            f"(BANDS={''.join(survey.bands)!r}). Received: BANDS={bands!r} {where}"
        )
    scale = cards.get("PIXSCALE")
    if scale is not None and (not isinstance(scale, (int, float))
                              or not math.isclose(scale, survey.pixel_scale_arcsec)):
        raise InputError(
            f"cutout pixel scale must be {survey.pixel_scale_arcsec} arcsec/px (PIXSCALE). "
            f"Received: PIXSCALE={scale!r} {where}"
        )
    described = _wcs_pixel_scale(cards)
    if described is not None and abs(described[1] / survey.pixel_scale_arcsec - 1) \
            > PIXEL_SCALE_TOLERANCE:
        shown, scale = described
        raise InputError(
            f"cutout pixel scale must be {survey.pixel_scale_arcsec} arcsec/px ({survey.name}, "
            f"within {PIXEL_SCALE_TOLERANCE:.0%}); its WCS gives {scale:.4g} arcsec/px. "
            f"Received: {', '.join(f'{key}={value!r}' for key, value in shown.items())} "
            f"{where}"
        )


# The first four characters of a CTYPE naming a celestial axis (trailing dashes dropped).
_CELESTIAL_AXES = ("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT")


def _wcs_pixel_scale(cards: Mapping):
    """``(cards, arcsec/px)``: the pixel scale a celestial WCS's ``CD`` (or ``CDELT`` and
    ``PC``) cards give, with the cards it was read from; None without such a WCS in degrees
    (or with unusable values: then nothing can be compared)."""
    types = [str(cards.get(f"CTYPE{axis}", "")).strip().upper() for axis in (1, 2)]
    units = [str(cards.get(f"CUNIT{axis}", "deg")).strip().lower() for axis in (1, 2)]
    if not all(kind[:4].rstrip("-") in _CELESTIAL_AXES for kind in types) \
            or any(unit not in ("deg", "") for unit in units):
        return None
    cd = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
    if any(name in cards for name in cd):
        shown = {name: cards[name] for name in cd if name in cards}  # absent elements are 0
        matrix = [cards.get(name, 0.0) for name in cd]
    elif "CDELT1" in cards and "CDELT2" in cards:
        pc = [cards.get(name, default) for name, default in
              (("PC1_1", 1.0), ("PC1_2", 0.0), ("PC2_1", 0.0), ("PC2_2", 1.0))]
        shown = {"CDELT1": cards["CDELT1"], "CDELT2": cards["CDELT2"]}
        if any(not isinstance(value, (int, float)) for value in (*shown.values(), *pc)):
            return None
        matrix = [shown["CDELT1"] * pc[0], shown["CDELT1"] * pc[1],
                  shown["CDELT2"] * pc[2], shown["CDELT2"] * pc[3]]
    else:
        return None
    if any(not isinstance(value, (int, float)) or isinstance(value, bool) for value in matrix):
        return None
    scale = math.sqrt(abs(matrix[0] * matrix[3] - matrix[1] * matrix[2])) * 3600.0
    return (shown, scale) if math.isfinite(scale) and scale > 0 else None


def band_of(header) -> str | None:
    """The SDSS band a ``BAND`` or ``FILTER`` card names (``'r'``, ``'SDSS_r'``, ``'r.00000'``
    as Pan-STARRS writes it), or None."""
    for keyword in ("BAND", "FILTER"):
        value = header.get(keyword)
        if isinstance(value, str):
            tokens = [token for token in re.split(r"[^a-z0-9]+", value.strip().lower())
                      if token in BANDS]
            if len(tokens) == 1:
                return tokens[0]
    return None


# The cards of a FITS world coordinate system: the bands of an object are compared on them.
_WCS_KEYWORD = re.compile(r"^(CTYPE|CRPIX|CRVAL|CDELT|CUNIT|CROTA)[12]$|^(CD|PC)[12]_[12]$|"
                          r"^(LONPOLE|LATPOLE|EQUINOX|RADESYS)$")
#: How far (pixels) the centres of an object's band images may lie apart on the sky, by their
#: WCS: more, and the centre crops of the bands show different sky.
MAX_BAND_OFFSET_PIXELS = 1.0


def _band_wcs(cards: Mapping):
    """The celestial/linear WCS of one band's cards, or None when it has none or it is
    unreadable (then nothing can be compared)."""
    described = {key: value for key, value in cards.items() if _WCS_KEYWORD.match(key)}
    if "CRPIX1" not in described or "CRPIX2" not in described:
        return None
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return WCS(fits.Header(described), naxis=2)
    except Exception:  # astropy.wcs raises many types for a malformed WCS
        return None


def check_band_alignment(shapes, cards, where: str) -> None:
    """Refuse an object whose u, g, r, i, z images differ in shape, or whose WCS (when the
    headers give one) puts their centres more than :data:`MAX_BAND_OFFSET_PIXELS` apart.

    Each band is centre-cropped on its own, so either fault puts different sky under the
    crop of each band, and a colour made of them is wrong (a QSO read as a STAR).

    Args:
        shapes: the full (uncropped) image shape of each band, in u, g, r, i, z order.
        cards: each band's header cards (primary and image HDU merged), same order.
        where: the file(s), for the message.

    Raises:
        InputError: the shapes differ, or a band's centre is more than a pixel from the r
            band's by their WCS.

    Example:
        >>> check_band_alignment([(48, 48)] * 5, [{}] * 5, "in file a.fits")
    """
    if len(set(map(tuple, shapes))) > 1:
        found = ", ".join(f"{b} {tuple(s)}" for b, s in zip(BANDS, shapes, strict=False))
        raise InputError(f"the five band images of a row must have one shape (each band is "
                         f"cropped about its own centre). Received: {found} {where}")
    described = [{key: value for key, value in band.items() if _WCS_KEYWORD.match(key)}
                 for band in cards]
    if all(band == described[0] for band in described):
        return  # one WCS for all (or none at all): nothing can disagree
    systems = {band: _band_wcs(band_cards) for band, band_cards in zip(BANDS, cards, strict=False)}
    systems = {band: system for band, system in systems.items() if system is not None}
    if len(systems) < 2:
        return
    reference = "r" if "r" in systems else next(iter(systems))
    height, width = shapes[0][-2:]
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)  # 0-based x, y: the crop's centre
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            sky = systems[reference].pixel_to_world_values(*centre)
            offsets = {band: float(np.hypot(*(np.asarray(system.world_to_pixel_values(*sky))
                                              - centre)))
                       for band, system in systems.items()}
        except Exception:  # a WCS astropy parses but cannot evaluate: nothing to compare
            return
    for band, offset in offsets.items():
        if not offset <= MAX_BAND_OFFSET_PIXELS:
            shown = "an undefined position" if not math.isfinite(offset) else \
                f"{offset:.1f} pixels"
            raise InputError(f"the five band images of a row must show the same sky: by their "
                             f"WCS the {band} image's centre lies {shown} from the "
                             f"{reference} image's, more than {MAX_BAND_OFFSET_PIXELS:g} pixel. "
                             f"Received: CRPIX {described[BANDS.index(band)].get('CRPIX1')}, "
                             f"{described[BANDS.index(band)].get('CRPIX2')} ({band}) and "
                             f"{described[BANDS.index(reference)].get('CRPIX1')}, "
                             f"{described[BANDS.index(reference)].get('CRPIX2')} "
                             f"({reference}) {where}")


def validated_cards(header: Mapping | None) -> list[tuple[str, object]]:
    """The cards a caller gives :func:`~starqso.io.write_cutout`, as ``(keyword, value)``;
    refuses what is not a writable card."""
    cards = []
    for key, value in (header or {}).items():
        keyword = str(key).strip().upper()
        if isinstance(value, np.generic):
            value = value.item()
        if not _FITS_KEYWORD.match(keyword) or keyword in ("COMMENT", "HISTORY"):
            raise InputError(
                "cutout header keys must be FITS keywords (1-8 of A-Z, 0-9, '_', '-'). "
                f"Received: {key!r}"
            )
        if _STRUCTURAL_KEYWORD.match(keyword):
            raise InputError(
                f"cutout header card {keyword} is written by write_cutout itself; "
                f"remove it from header. Received: {keyword}={value!r}"
            )
        if not isinstance(value, (bool, int, float, str)):
            raise InputError(
                f"cutout header values must be str, int, float or bool. "
                f"Received: {keyword}={value!r} of type {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"cutout header values must be finite. Received: {keyword}={value!r}")
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            raise InputError(
                f"cutout header strings must be printable ASCII. Received: {keyword}={value!r}"
            )
        cards.append((keyword, value))
    return cards

