"""``starqso fit``: the configured stages, in order, into one run folder.

:func:`fit_run` checks the run folder and the data before TensorFlow starts, reads (or
simulates) the objects as :class:`~starqso.data.ObjectArrays`, fits the input preprocessing
once (:class:`~starqso.training.inputs.ModelInputs`), runs each stage of
:mod:`starqso.training.stages` through the :class:`~starqso.training.runner.StageRunner`, and
exports the deployable model. The folder's layout is
:class:`~starqso.training.run_folder.RunFolder`'s.
"""

from __future__ import annotations

import pathlib
import shutil
import time

from starqso._util.ownership import output_folder, writes_output
from starqso.config import PRESETS, RunConfig, config_to_dict
from starqso.data.arrays import ObjectArrays
from starqso.errors import InputError
from starqso.simulate.brightness import HIGH_Z_R_RANGE, Brightness
from starqso.simulate.dust import Crowding, Reddening
from starqso.simulate.injection import BackgroundSource
from starqso.training.run_folder import RunFolder
from starqso.training.runner import StageRunner
from starqso.training.stages import STAGES, StageContext, default_stages


def simulation_arguments(config, backgrounds=None, log=None) -> dict:
    """The keyword arguments of :meth:`ObjectArrays.from_simulation
    <starqso.data.ObjectArrays.from_simulation>` (after the count and seed) for ``config``'s
    simulated demo data: one place, so that ``fit`` and a later ``export`` of the same run
    simulate the same objects.

    Args:
        config: the run's :class:`~starqso.config.RunConfig`.
        backgrounds: the run's :class:`~starqso.simulate.injection.BackgroundSource`, or None.
        log: optional callable told what the simulation adds (injection, dust, crowding,
            brightness, galaxies).

    Returns:
        dict of keyword arguments.

    Example:
        >>> simulation_arguments(get_preset("tiny"))["cutout_size"]  # doctest: +SKIP
        24
    """
    data = config.data
    log = log or (lambda line: None)
    arguments = dict(image_size=config.model.image_size, cutout_size=data.cutout_size,
                     qso_fraction=data.qso_fraction)
    if backgrounds is not None:
        log(f"injecting a fraction {backgrounds.fraction:g} of them into "
            f"{backgrounds.count} real blank-sky cutouts of {len(backgrounds.fields)} "
            f"fields ({backgrounds.path})")
        arguments["backgrounds"] = backgrounds
    if data.reddening_fraction > 0:
        log(f"reddening a fraction {data.reddening_fraction:g} of them by E(B-V) up to "
            f"{data.max_ebv:g}")
        arguments["reddening"] = Reddening(data.reddening_fraction, data.max_ebv)
    if data.neighbour_density_fraction > 0:
        log(f"crowding the fields of a fraction {data.neighbour_density_fraction:g} of them "
            f"up to {data.max_neighbour_density:g}x the neighbours")
        arguments["crowding"] = Crowding(data.neighbour_density_fraction,
                                         data.max_neighbour_density)
    if data.magnitude_mixing_fraction > 0:
        log(f"drawing the r magnitudes of a fraction {data.magnitude_mixing_fraction:g} of "
            f"them from both classes alike")
    if data.high_z_magnitude_fraction > 0:
        log(f"drawing the r magnitudes of a fraction {data.high_z_magnitude_fraction:g} of "
            f"the high-redshift QSOs over {HIGH_Z_R_RANGE[0]:g}-{HIGH_Z_R_RANGE[1]:g}")
    if max(data.magnitude_mixing_fraction, data.high_z_magnitude_fraction) > 0:
        arguments["brightness"] = Brightness(data.magnitude_mixing_fraction,
                                             data.high_z_magnitude_fraction)
    if data.galaxy_fraction > 0:
        log(f"making a fraction {data.galaxy_fraction:g} of them galaxies")
        arguments["galaxy_fraction"] = data.galaxy_fraction
    return arguments


def recorded_backgrounds(folder, config):
    """The sky backgrounds a simulated run was trained with (its ``data.json``), opened and
    checked unchanged, or None for a run without them.

    Raises:
        InputError: the recorded file is gone or has changed since the run.
    """
    return _sky_backgrounds(folder, config, None, None, None, resume=True)


def _load_arrays(config, data, log, strict=False, simulation_cache=None, backgrounds=None):
    if data is None:
        log(f"simulating {config.data.num_objects} demo objects (seed "
            f"{config.data.simulation_seed}) ...")
        arguments = simulation_arguments(config, backgrounds, log)
        if simulation_cache is not None:
            return ObjectArrays.from_simulation_cache(
                simulation_cache, config.data.num_objects, config.data.simulation_seed,
                log=log, **arguments)
        return ObjectArrays.from_simulation(config.data.num_objects,
                                            config.data.simulation_seed, **arguments)
    log(f"reading catalogue {data} ...")
    return ObjectArrays.from_catalog(data, config.model.image_size, require_labels=True,
                                     strict=strict)


def report_flags(folder, flags, log):
    path = folder.write_flags(flags)
    if path is None:
        return
    left_out = sum(not f["used"] for f in flags)
    first = flags[0]
    log(f"{len(flags)} catalogue rows flagged ({left_out} left out, {len(flags) - left_out} "
        f"used with a repair or without their spectrum), listed in {path}; "
        f"first: row {first['row']} (id {first['id']!r}): {first['flag']}")


def fit_run(out_dir, config: RunConfig | None = None, data=None, strategy="default",
            resume=False, log=print, arrays=None, export=True, strict=False, stages=None,
            reuse=None, simulation_cache=None, sky_backgrounds=None):
    """Train the configured stages and write the run folder.

    Args:
        out_dir: run folder.
        config: run configuration (``PRESETS["base"]`` when None). With ``resume`` the run
            folder's own ``config.yaml`` is used.
        data: catalogue path (CSV/FITS) or None for freshly simulated demo data.
        strategy: "default", "mirrored" or "multiworker".
        resume: continue an interrupted run in ``out_dir``.
        log: callable receiving progress lines.
        arrays: objects already in memory (:class:`~starqso.data.ObjectArrays`) instead of
            ``data``; for benchmarks that train several runs on one simulation (``resume``
            then needs the same arrays again).
        export: export the deployable model into ``out_dir/export`` at the end.
        strict: fail on any catalogue row that would be flagged; otherwise unusable rows
            are left out and every flagged row is listed in ``out_dir/data_flags.csv``.
        stages: the :class:`~starqso.training.stages.Stage` objects to run, in order
            (default: encoder, GAN or diffusion generator (``model.generator``), fusion,
            image-only).
        reuse: ``{stage name: run folder}``: take these completed stages from another run
            folder of the same data and split instead of training them (a variant of the
            later stages on the same encoder, say).
        simulation_cache: folder keeping simulated demo data between runs
            (:meth:`~starqso.data.ObjectArrays.from_simulation_cache`); None simulates anew.
        sky_backgrounds: a sky-background file (``starqso skies``) or folder of them: a
            fraction ``data.sky_backgrounds_fraction`` (default 0.5) of the simulated
            objects is injected into its real blank-sky cutouts
            (:mod:`starqso.simulate.injection`), recorded in ``data.json`` and the model
            card. None: fully simulated objects, as before.

    Returns:
        dict of validation metrics per stage.

    Raises:
        InputError: a bad configuration, data, or an existing run folder without ``resume``;
            an ``out_dir`` that holds anything but a fit run (see
            :func:`starqso._util.ownership.output_folder`), or that another run is writing.

    Example:
        >>> metrics = fit_run("runs/demo", get_preset("tiny"))  # doctest: +SKIP
    """
    if not writes_output(strategy):
        # A multi-worker run's other workers write a scratch folder, never --out.
        return _fit_run(out_dir, config, data, strategy, resume, log, arrays, export, strict,
                        stages, reuse, simulation_cache, sky_backgrounds)

    # Before anything is read: --out must be new, empty or a fit run (see ownership), and
    # one run at a time writes it. A run refused or failing before its first file leaves
    # nothing behind.
    with output_folder(out_dir, "fit", mark=True):
        return _fit_run(out_dir, config, data, strategy, resume, log, arrays, export, strict,
                        stages, reuse, simulation_cache, sky_backgrounds)


def _fit_run(out_dir, config, data, strategy, resume, log, arrays, export, strict, stages,
             reuse, simulation_cache, sky_backgrounds=None):
    folder = RunFolder(out_dir)
    out = folder.root
    stages = None if stages is None else list(stages)
    known = [*STAGES, *(stage.name for stage in stages or ())]
    if arrays is not None and data is not None:
        raise InputError(f"fit takes --data or in-memory arrays, not both. Received: "
                         f"data={data}")
    if resume:
        if not folder.config_path.exists():
            raise InputError(f"--resume needs a run folder with config.yaml. Received: "
                             f"{out} has none")
        saved = folder.load_config()
        if config is not None and config_to_dict(config) != config_to_dict(saved):
            raise InputError(f"--resume continues {out} with its own config.yaml; drop "
                             f"--config/--preset or start a new --out. Received: a different "
                             f"configuration")
        config = saved
        stages = default_stages(config) if stages is None else list(stages)
        # The models of completed stages are checked before TensorFlow starts.
        completed = folder.completed_stages(known)
        folder.check_models(name for stage in stages if stage.name in completed
                            for name in stage.files)
    else:
        if folder.holds_run():
            raise InputError(f"{out} already holds a run; pass --resume to continue it or "
                             f"choose another --out. Received: out={out}")
        config = config or PRESETS["base"]
        stages = default_stages(config) if stages is None else list(stages)
    # The data a run trains on is part of it: --resume must not silently switch to demo data.
    given = str(pathlib.Path(data).resolve()) if data is not None else None
    recorded, saved_data = folder.data_source() if resume else (False, None)
    if recorded:
        if data is not None and given != saved_data:
            raise InputError(f"--resume continues {out} on the data it started with. Received: "
                             f"--data {data}, but the run used "
                             f"{saved_data or 'simulated demo data'}")
        data = saved_data
    weights = config.model.trunk_weights
    if weights is not None and not pathlib.Path(weights).is_file():
        raise InputError(f"model.trunk_weights must be a weights file. Received: {weights} "
                         f"(no such file)")
    backgrounds = _sky_backgrounds(folder, config, sky_backgrounds, data, arrays, resume)
    began = time.perf_counter()
    # The data first: a bad catalogue stops the run before it leaves a folder behind.
    if arrays is None:
        arrays = _load_arrays(config, data, log, strict, simulation_cache, backgrounds)

    for name, other in (reuse or {}).items():
        stage = next(stage for stage in stages if stage.name == name)
        folder.adopt(RunFolder(other), name, stage.files)
        resume = True
    runner = StageRunner(folder, config, strategy, resume, log, known_stages=known)
    context = StageContext.create(config, arrays)
    if runner.chief:
        folder.save_config(config)
        if not recorded:
            folder.save_data_source(given, None if backgrounds is None
                                    else backgrounds.describe())
        report_flags(folder, arrays.flags, log)
        folder.save_split({name: arrays.ids[index] for name, index in (
            ("train", context.train), ("validation", context.validation),
            ("test", context.test))})
        folder.save_preprocessing(context.inputs.record(config.model.image_size))
    for stage in stages:
        runner.run(stage, context)
    if runner.chief:
        shutil.rmtree(out / "backup", ignore_errors=True)
    if runner.chief and export and folder.deployable_path.exists():
        from starqso.deploy.export import export_run

        export_run(out, out / "export", log=log, arrays=arrays)
    log(f"done in {time.perf_counter() - began:.0f} s -> {out}")
    return runner.metrics


def _sky_backgrounds(folder, config, path, data, arrays, resume):
    """The :class:`~starqso.simulate.injection.BackgroundSource` of ``--sky-backgrounds``.

    ``--resume`` reuses the backgrounds the run started with (they must be unchanged).
    """
    recorded = folder.sky_backgrounds() if resume else None
    if resume and recorded is None and path is not None and folder.data_source()[0]:
        raise InputError(f"--resume continues {folder.root} on the data it started with, "
                         f"without sky backgrounds. Received: --sky-backgrounds {path}")
    if path is None and recorded is not None:
        path = recorded["path"]
    if path is None:
        return None
    if data is not None or arrays is not None:
        raise InputError(f"--sky-backgrounds injects simulated objects into real sky, so it "
                         f"needs simulated demo data, not --data. Received: --sky-backgrounds "
                         f"{path} with --data {data}")
    source = BackgroundSource.open(path, config.data.sky_backgrounds_fraction,
                                   size=config.data.cutout_size)
    if recorded is not None and recorded["sha256"] != source.sha256:
        raise InputError(f"--resume continues {folder.root} on the sky backgrounds it started "
                         f"with; {path} has changed (SHA-256 {source.sha256[:12]}..., the run "
                         f"used {recorded['sha256'][:12]}...)")
    return source
