"""Validation of a built Config: every check that needs no model or data, each failure one
ConfigError naming the key and the fix (`validate`, run by llmc.config.load_config), and the
sparse section's own (`validate_sparse`: the common keys, then each method's declared checks)."""
import os
import re

from .schema import (DTYPES, EVAL_POSITIONS, MODEL_LOADS, SEED_LIMIT, Config, SparseCfg,
                     declared_settings)
from ..distributed import check_ranks, env_world_size
from ..errors import ConfigError
from ..registry import BUILTIN_MODELS, DATASETS, METHODS, MODELS, PREPROCS, closest
from ..sparse.steps import check_steps
from ..structure import structure_class


def _check_path(path, key, what):
    if not path:
        raise ConfigError(f"{key} is not set; point it at {what}")
    if not os.path.exists(os.path.expanduser(path)):
        raise ConfigError(f"{key}: '{path}' does not exist; point it at {what}")


def check_seed(seed: int, key: str) -> None:
    """A seed every generator llmc seeds accepts (numpy's is the narrowest)."""
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{key} must be an integer in [0, 2^32), got {seed}")


def validate(cfg: Config, model_given: bool = False, calibration_given: bool = False) -> Config:
    """Everything checkable without loading a model or data. Raises one ConfigError.
    `model_given`, `calibration_given` (llmc.prune): the caller holds the model, or gives the
    calibration data, so model.path and the calib data source are not read (not checked)."""
    check_seed(cfg.base.seed, "base.seed")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.base.device):
        raise ConfigError(f"base.device '{cfg.base.device}' must be auto, cpu, cuda or cuda:N")
    if cfg.base.offload_activations not in (True, False, "auto", "disk"):
        raise ConfigError("base.offload_activations must be auto, true, false or disk")
    if not cfg.base.collective_timeout > 0:
        raise ConfigError(f"base.collective_timeout must be > 0 seconds, got "
                          f"{cfg.base.collective_timeout}")
    if not model_given:  # a model object is pruned by the one process that holds it
        check_ranks(cfg.calib, env_world_size())

    # Checkpoints whose modeling code is not part of transformers (Baichuan) need permission
    # (model.type auto: checked against config.json's auto_map by the preflight).
    # (A model object given to llmc.prune runs the code its caller already chose to run.)
    if cfg.model.type != "auto":
        adapter = MODELS.lookup(cfg.model.type, "model.type")
        if not model_given:
            adapter.check_remote_code_allowed(cfg.model.trust_remote_code)
    if cfg.model.load not in MODEL_LOADS:
        raise ConfigError(f"model.load '{cfg.model.load}' must be one of "
                          f"{', '.join(MODEL_LOADS)}{closest(cfg.model.load, MODEL_LOADS)}")
    if cfg.model.torch_dtype not in DTYPES:
        raise ConfigError(f"model.torch_dtype '{cfg.model.torch_dtype}' must be one of "
                          f"{', '.join(DTYPES)}{closest(cfg.model.torch_dtype, DTYPES)}")
    path = cfg.model.path
    if model_given:
        pass
    elif path and path.startswith("builtin:"):
        BUILTIN_MODELS.lookup(path[len("builtin:"):], "model.path builtin")
    else:
        _check_path(path, "model.path", "a local Hugging Face model directory "
                    "(or builtin:smollm2-135m)")

    _validate_calib(cfg, calibration_given)
    _validate_eval(cfg)
    _validate_sparse(cfg)
    if not cfg.save.save_path:
        raise ConfigError("save.save_path is empty; set a directory for results")
    _validate_save_format(cfg)
    _validate_bench(cfg, model_given)
    return cfg


def _validate_bench(cfg, model_given):
    if not cfg.save.bench:
        return
    if not cfg.save.save_trans:
        raise ConfigError("save.bench measures the saved model, and save.save_trans is off; set "
                          "save.save_trans: True, or remove save.bench")
    if model_given:
        raise ConfigError("save.bench compares the saved model with the checkpoint it was "
                          "pruned from, and a model object has none on disk; give llmc.prune "
                          "the checkpoint's path, or run llmc bench-model on the two directories")
    if env_world_size() > 1:
        raise ConfigError("save.bench runs in one process, not under torchrun; run llmc "
                          "bench-model on the saved model afterwards")


def _validate_save_format(cfg):
    from ..packed import FORMATS, require_library

    save = cfg.save
    if save.format not in FORMATS:
        raise ConfigError(f"save.format '{save.format}' must be one of {', '.join(FORMATS)}"
                          f"{closest(save.format, FORMATS)}")
    if save.format == "hf":
        return
    if not save.save_trans:
        raise ConfigError("save.format: compressed-tensors says how the model is saved, and "
                          "save.save_trans is off; set save.save_trans: True, or remove "
                          "save.format")
    sp = cfg.sparse
    bits = 16 if sp.refine or sp.update else METHODS[sp.method].quantization_bits(sp)
    if bits >= 16:
        raise ConfigError("save.format: compressed-tensors saves the weights a run quantized "
                          "(sparse.wbits: 2..8 with SparseGPT, MixGPT, or OWL over them, and no "
                          f"refine/update step) packed; this run ({sp.method}"
                          f"{' + steps' if sp.refine or sp.update else ''}) quantizes nothing: "
                          "set sparse.wbits, or save.format: hf")
    require_library()


def _validate_calib(cfg, calibration_given=False):
    calib = cfg.calib
    if calib.type != "txt":
        raise ConfigError(f"calib.type '{calib.type}': only 'txt' calibration data is supported")
    spec = DATASETS.lookup(calib.name, "calib.name")
    PREPROCS.lookup(calib.preproc, "calib.preproc")  # a Sampler (llmc.data.preproc)
    check_seed(calib.seed, "calib.seed")
    if calib.n_samples < 1:
        raise ConfigError(f"calib.n_samples must be >= 1, got {calib.n_samples}")
    if calib.min_expert_tokens < 0:
        raise ConfigError(f"calib.min_expert_tokens must be >= 0 (0: experts are measured on "
                          f"their routed tokens only), got {calib.min_expert_tokens}")
    if calib.seq_len < 1:
        raise ConfigError(f"calib.seq_len must be >= 1, got {calib.seq_len}")
    if calib.bs == 0 or calib.bs < -1:
        raise ConfigError(f"calib.bs must be -1 (one batch) or >= 1, got {calib.bs}")
    if calib.bs != 1 and PREPROCS[calib.preproc].variable_length:
        raise ConfigError(f"calib.bs: {calib.bs} needs windows of one length, but preproc "
                          f"'{calib.preproc}' yields windows of different lengths; use bs: 1")
    method = METHODS.get(cfg.sparse.method)
    if method is not None:
        if not method.calibrates(cfg.sparse):
            return  # the method uses no calibration data (e.g. Magnitude): nothing to check
        method.check_calibration(cfg.sparse, calib)
    if calibration_given:
        return  # the data is the caller's, not calib.name's
    _refuse_unread_path("calib", calib.name, spec.needs_path, calib.path, calib.download)
    if spec.needs_path and not calib.download:
        _check_path(calib.path, "calib.path", f"a local copy of '{calib.name}' "
                    "(or set calib.download: True)")


def _refuse_unread_path(section, names, needs_path, path, download, key=None):
    """A path the run would not read is a config that says what the run did not do: the user
    believes the data comes from that file."""
    key = key or f"{section}.path"
    if path is None:
        return
    if not needs_path:
        raise ConfigError(f"{key} is set to '{path}' but {section}.name '{names}' reads no file "
                          "(the built-in corpus); set the name to the dataset the file holds "
                          f"(c4, wikitext2, ptb{', pileval' if section == 'calib' else ''}) or "
                          f"remove {key}")
    if download:
        raise ConfigError(f"{key} is set to '{path}' but {section}.download: True reads the "
                          f"hub copy instead; remove one of them")


def _validate_eval(cfg):
    ev = cfg.eval
    if ev.type != "ppl":
        raise ConfigError(f"eval.type '{ev.type}': only 'ppl' (perplexity) is supported")
    for pos in ev.eval_pos:
        if pos not in EVAL_POSITIONS:
            raise ConfigError(f"eval.eval_pos '{pos}' is not one of {', '.join(EVAL_POSITIONS)}"
                              f"{closest(pos, EVAL_POSITIONS)}")
    if not ev.eval_pos:  # no evaluation at all: the datasets and tasks are not read
        return
    if not ev.names:
        raise ConfigError("eval.name is empty; name at least one dataset or set eval_pos: []")
    repeated = sorted({name for name in ev.names if ev.names.count(name) > 1})
    if repeated:  # one result per name: the second evaluation would overwrite the first
        raise ConfigError(f"eval.name lists '{repeated[0]}' more than once; list it once")
    if isinstance(ev.path, dict):
        for name in ev.path:  # a misspelt name would be ignored, its dataset left without a path
            if name not in DATASETS:
                raise ConfigError(f"eval.path has an entry for '{name}', which is no dataset"
                                  f"{closest(name, DATASETS)}; known: "
                                  f"{', '.join(sorted(DATASETS))}")
    reading = [name for name in ev.names if DATASETS.lookup(name, "eval.name").needs_path]
    if isinstance(ev.path, dict):
        for name, path in ev.path.items():
            _refuse_unread_path("eval", name, DATASETS[name].needs_path, path, ev.download,
                                f"eval.path.{name}")
    else:
        _refuse_unread_path("eval", ", ".join(ev.names), bool(reading), ev.path, ev.download)
    for name in ev.names:
        spec = DATASETS.lookup(name, "eval.name")
        if not spec.supports_eval:
            evaluable = sorted(n for n, s in DATASETS.items() if s.supports_eval)
            raise ConfigError(f"eval.name '{name}' has no evaluation split; use one of "
                              f"{', '.join(evaluable)}")
        if spec.needs_path and not ev.download:
            _check_path(ev.path_for(name), f"eval.path (for {name})",
                        f"a local copy of '{name}' (or set eval.download: True)")
    if ev.bs < 1 or ev.seq_len < 2:
        raise ConfigError(f"eval.bs must be >= 1 and eval.seq_len >= 2, got {ev.bs}, {ev.seq_len}")
    if ev.max_windows is not None and ev.max_windows < 1:
        raise ConfigError(f"eval.max_windows must be >= 1 or null, got {ev.max_windows}")
    _validate_tasks(ev)


def _validate_tasks(ev):
    from ..eval.harness import installed, is_task_file
    from ..eval.tasks import CLOZE

    repeated = sorted({name for name in ev.tasks if ev.tasks.count(name) > 1})
    if repeated:
        raise ConfigError(f"eval.tasks lists '{repeated[0]}' more than once; list it once")
    harness = [name for name in ev.tasks if name != CLOZE]
    for name in harness:
        if is_task_file(name) and not os.path.isfile(name):
            raise ConfigError(f"eval.tasks: the task file '{name}' does not exist; give the path "
                              "of an lm-eval task YAML (docs/eval.md)")
    unused = [key for key, value, default in (("num_fewshot", ev.num_fewshot, None),
                                              ("limit", ev.limit, None),
                                              ("tasks_bs", ev.tasks_bs, 1)) if value != default]
    if unused and not harness:
        raise ConfigError(f"eval.{unused[0]} applies to lm-eval tasks and eval.tasks names none; "
                          "remove it, or add lm-eval tasks to eval.tasks")
    if ev.cloze_paragraphs < 1:
        raise ConfigError(f"eval.cloze_paragraphs must be >= 1, got {ev.cloze_paragraphs}")
    if ev.num_fewshot is not None and ev.num_fewshot < 0:
        raise ConfigError(f"eval.num_fewshot must be >= 0 or null, got {ev.num_fewshot}")
    if ev.limit is not None and ev.limit <= 0:
        raise ConfigError(f"eval.limit must be > 0 or null, got {ev.limit}")
    if ev.tasks_bs < 1:
        raise ConfigError(f"eval.tasks_bs must be >= 1, got {ev.tasks_bs}")
    if harness and not installed():
        raise ConfigError(f"eval.tasks names lm-eval tasks ({', '.join(harness)}) but "
                          "lm-evaluation-harness is not installed: pip install -e \".[eval]\"")
    if harness and env_world_size() > 1:
        raise ConfigError("eval.tasks: lm-eval tasks run in one process, not under torchrun; "
                          "run lm_eval on the saved model afterwards, or keep only cloze")


def _validate_sparse(cfg):
    validate_sparse(cfg.sparse)


def validate_sparse(sp: SparseCfg) -> SparseCfg:
    """The common keys, then the method's own checks of its settings (and its parts'), then no
    setting the config gives is one the method would silently ignore."""
    method = METHODS.lookup(sp.method, "sparse.method")
    s = sp.weight.sparsity
    if not 0 <= s < 1:
        raise ConfigError(f"sparse.weight.sparsity must be in [0, 1), got {s}")
    kind = sp.weight.sparsity_type
    if kind != "unstructured":
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", kind)
        if not match:
            raise ConfigError(f"sparse.weight.sparsity_type '{kind}' must be 'unstructured' or "
                              "'N:M' such as '2:4'")
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ConfigError(f"sparse.weight.sparsity_type '{kind}': N:M needs 0 < N < M "
                              "(N of every M consecutive weights are zeroed), e.g. '2:4'")
        sp.weight.sparsity_type = f"{n}:{m}"
    structure = structure_class(sp)
    if structure is not None:
        sp.settings_for(structure).check(sp.weight)
    method.check_config(sp)
    check_steps(sp, method)
    _refuse_settings_not_in_effect(sp)
    return sp


def _refuse_settings_not_in_effect(sp: SparseCfg) -> None:
    """A setting the config gives that the chosen method does not read would be silently
    ignored (e.g. wbits: 4 with Wanda quantizes nothing, use_variant: true with SparseGPT), so it
    is an error naming who uses it, whatever its value: config.yml records the settings in
    effect, and a run's config should say nothing it did not do."""
    used = sp.in_effect()
    declared = declared_settings()
    parts = [part.__name__ for part in METHODS[sp.method].parts(sp)]
    chosen = sp.method if len(parts) == 1 else f"{sp.method} (over {', '.join(parts[1:])})"
    steps = [f"{kind}: {getattr(sp, kind)}" for kind in ("refine", "update") if getattr(sp, kind)]
    structure = [f"structure: {sp.structure}"] if sp.structure else []
    chosen = " + ".join(structure + [chosen] + steps)
    for key in sp.settings:
        users = declared[key][2]
        if key not in used:
            # a method is chosen by sparse.method, a step by its kind (users "update: admm")
            ways = [f"sparse.{user.replace(': ', ' to ')}" if ":" in user
                    else f"sparse.method to {user}" for user in users]
            raise ConfigError(f"sparse.{key} is a setting of {' and '.join(users)}; {chosen} "
                              f"does not use it: remove it, or set {' or '.join(ways)}")
