"""The simulation cache: reused for the same arguments and simulator, never otherwise."""

import os

import numpy as np

from starqso.data.arrays import ObjectArrays


def test_cache_is_reused_for_the_same_simulation_only(tmp_path):
    lines = []
    first = ObjectArrays.from_simulation_cache(tmp_path, 4, 3, image_size=16, cutout_size=24,
                                               workers=1, log=lines.append)
    again = ObjectArrays.from_simulation_cache(tmp_path, 4, 3, image_size=16, cutout_size=24,
                                               workers=1, log=lines.append)
    assert "cached in" in lines[0] and "simulation cache" in lines[1]
    np.testing.assert_array_equal(first.images, again.images)
    assert list(first.ids) == list(again.ids)
    direct = ObjectArrays.from_simulation(4, 3, image_size=16, cutout_size=24, workers=1)
    np.testing.assert_array_equal(first.spectra, direct.spectra)
    ObjectArrays.from_simulation_cache(tmp_path, 4, 4, image_size=16, cutout_size=24,
                                       workers=1)
    assert len(os.listdir(tmp_path)) == 2
