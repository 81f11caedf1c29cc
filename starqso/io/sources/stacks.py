"""Array stacks: a FITS file or an HDF5 file holding (N, 5, H, W) cubes and their ids.

:class:`StackSource` is what they share with the zarr stacks (:mod:`.zarr_stacks`): cubes come
as centre crops of one (N, ...) array per piece.
"""

from __future__ import annotations

import numpy as np

from starqso._util.extras import require_survey
from starqso.errors import InputError
from starqso.io.safe_read import file_sha256
from starqso.io.sources.base import (
    Block,
    Source,
    ebv_numbers,
    find_id_column,
    keep_names,
    text_ids,
)
from starqso.preprocessing.crop import crop_window
from starqso.schema import NUM_BANDS


class StackSource(Source):
    """Shared by the array stacks: cubes come as crops of one (N, ...) array per piece.

    The FITS and HDF5 stacks hold their ids (``_id_values``) and kept columns (``_keep``) in
    memory and give their (N, 5, H, W) array by :meth:`_images`.
    """

    def __init__(self, path, id_column=None):
        super().__init__(path)
        self.id_column = id_column

    def _arguments(self):
        return {"path": self.path, "id_column": self.id_column, "keep": self.keep_columns,
                "ebv": self.ebv_column is not None}

    def read_ids(self, partition):
        return self._id_values[partition.start:partition.stop]

    def _images(self):
        raise NotImplementedError

    def read(self, partition, size, start=None, stop=None):
        start = partition.start if start is None else start
        stop = partition.stop if stop is None else stop
        cubes = self._crop(self._images(), start, stop, size, f"in file {self.path}",
                           channels_last=False)
        where = [f"cube {row} of file {self.path}" for row in range(start, stop)]
        return Block(self._id_values[start:stop], cubes, where,
                     {name: values[start:stop] for name, values in self._keep.items()})

    def fingerprint(self):
        return file_sha256(self.path)

    def _crop(self, array, start, stop, size, where, channels_last):
        height, width = (array.shape[1:3] if channels_last else array.shape[2:4])
        if size is None:
            rows, columns = slice(None), slice(None)
        else:
            try:
                rows, columns = crop_window(height, width, size, where)
            except InputError as err:
                return [str(err)] * (stop - start)
        if channels_last:
            cubes = np.asarray(array[start:stop, rows, columns, :])
            cubes = np.moveaxis(cubes, -1, 1)
        else:
            cubes = np.asarray(array[start:stop, :, rows, columns])
        return np.ascontiguousarray(cubes, dtype=np.float32)


class FitsStackSource(StackSource):
    """A FITS file holding an (N, 5, H, W) image and a table with the N ids."""

    kind = "fits-stack"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path, id_column)
        from astropy.io import fits

        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdulist:
            image, table = None, None
            for number, hdu in enumerate(hdulist):
                if image is None and getattr(hdu, "is_image", False) and \
                        hdu.header.get("NAXIS", 0) == 4:
                    image = number
                if table is None and isinstance(hdu, (fits.BinTableHDU, fits.TableHDU)):
                    table = number
            shape = tuple(hdulist[image].shape) if image is not None else None
            if shape is None or shape[1] != NUM_BANDS:
                raise InputError(f"a FITS cube stack must hold an (N, 5, H, W) image (NAXIS4 = "
                                 f"N). Received: shape={shape} in file {path}")
            if table is None:
                raise InputError(f"a FITS cube stack needs a table HDU with the id of each "
                                 f"cube. Received: no table in file {path}")
            names = [name.lower() for name in hdulist[table].columns.names]
            column = find_id_column(names, id_column, f"file {path}")
            data = hdulist[table].data
            values = data[hdulist[table].columns.names[names.index(column)]]
            self._id_values = text_ids(list(values), f"the id table of file {path}")
            self.keep_columns = keep_names(keep, names, f"the id table of file {path}")
            self._find_ebv(ebv, names)
            self._keep = {name: native_column(data[hdulist[table].columns.names[
                names.index(name)]]) for name in self.read_columns}
            if self.ebv_column:
                ebv_numbers(self._keep[self.ebv_column], f"column {self.ebv_column} of the id "
                            f"table of file {path}")
        if len(self._id_values) != shape[0]:
            raise InputError(f"a FITS cube stack needs one id per cube. Received: "
                             f"{len(self._id_values)} ids for {shape[0]} cubes in file {path}")
        self.image_hdu, self.num_rows = image, shape[0]
        self._hdulist = None

    def _images(self):
        from astropy.io import fits

        if self._hdulist is None:
            self._hdulist = fits.open(self.path, memmap=False, lazy_load_hdus=True)
        return self._hdulist[self.image_hdu].section


class Hdf5StackSource(StackSource):
    """An HDF5 file with datasets ``images`` (N, 5, H, W) and ``id`` (N)."""

    kind = "hdf5-stack"

    def __init__(self, path, id_column=None, keep=(), ebv=False):
        super().__init__(path, id_column)
        require_survey("an HDF5 stack input", "h5py")
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                if "images" not in handle:
                    raise InputError(f"an HDF5 cube stack needs a dataset 'images' (N, 5, H, "
                                     f"W). Received: datasets {sorted(handle)} in file {path}")
                shape, dtype = handle["images"].shape, handle["images"].dtype
                column = find_id_column([str(name).lower() for name in handle], id_column,
                                    f"file {path}")
                ids = [name for name in handle if str(name).lower() == column][0]
                self._id_values = text_ids(handle[ids][()], f"dataset {ids} of file {path}")
                names = {str(name).lower(): name for name in handle}
                self.keep_columns = keep_names(keep, list(names), f"file {path}")
                self._find_ebv(ebv, list(names))
                self._keep = {name: native_column(handle[names[name]][()])
                              for name in self.read_columns}
        except OSError as err:
            raise InputError(f"HDF5 file could not be read ({err}): {path}") from err
        if len(shape) != 4 or shape[1] != NUM_BANDS:
            raise InputError(f"an HDF5 cube stack's images must be (N, 5, H, W). Received: "
                             f"shape={shape} in file {path}")
        check_real_pixels(dtype, f"an HDF5 cube stack's images in file {path}")
        if len(self._id_values) != shape[0]:
            raise InputError(f"an HDF5 cube stack needs one id per cube. Received: "
                             f"{len(self._id_values)} ids for {shape[0]} cubes in file {path}")
        self.num_rows = shape[0]
        self._handle = None
        for name, values in self._keep.items():
            if values.shape[:1] != (self.num_rows,):
                raise InputError(f"--keep {name}: the dataset must hold one value per cube. "
                                 f"Received: shape={values.shape} in file {path}")
        if self.ebv_column:
            ebv_numbers(self._keep[self.ebv_column], f"dataset {self.ebv_column} of file {path}")

    def _images(self):
        import h5py

        if self._handle is None:
            self._handle = h5py.File(self.path, "r")
        return self._handle["images"]


def check_real_pixels(dtype, what):
    """Refuse pixels that are not real numbers (complex, text, objects) before any is read.

    Casting complex pixels to float32 would drop the imaginary part with only a NumPy
    ComplexWarning; nanomaggies are real.

    Args:
        dtype: the stored dtype.
        what: what holds the pixels, naming the file (``"zarr stack images in X"``).

    Raises:
        InputError: the dtype is not an integer, unsigned or float type.

    Example:
        >>> check_real_pixels(np.dtype("float32"), "images in a.zarr")
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        kind = "complex numbers" if dtype.kind == "c" else f"dtype {dtype}"
        raise InputError(f"{what} must be real numbers (integer or float nanomaggies); "
                         f"{kind} are refused rather than cast. Received: dtype={dtype}")


def native_column(values):
    """A table column as a native-endian NumPy array, text decoded to str."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8", errors="replace")
    if values.dtype.kind in "iuf" and not values.dtype.isnative:
        return values.astype(values.dtype.newbyteorder("="))
    return values
