"""Command-line plumbing shared by every sub-command: environment defaults validated like their flags,
one-line usage errors, and the argparse value types.

Every option that reads an environment variable takes its default from ``env(NAME, default)``. The value
is checked by the option's own ``type`` and ``choices``, but only when the option is not given on the
command line, and the error names the variable::

    $ LABEL_ANYTHING_PORT=80O3 label-anything serve
    label-anything serve: error: LABEL_ANYTHING_PORT='80O3': '80O3' is not a whole number (see --help)

A bad variable that the chosen command does not read is never looked at.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from label_anything.app.ray_pool import LOCAL_CLUSTER, RAY_ADDRESS_ENV
from label_anything.engine.models import MODEL_CONFIGS, MODEL_NAMES
from label_anything.engine.redis_cache import CACHE_TTL_ENV, CACHE_URL_ENV, DEFAULT_TTL_S
from label_anything.errors import PromptError

if TYPE_CHECKING:
    from label_anything.engine.redis_cache import RedisLevel

log = logging.getLogger("label_anything")

SECRET_WORDS = ("AUTH", "KEY", "PASSWORD", "TOKEN", "SECRET")
"""A variable whose name holds one of these is never echoed in an error (its value may be a credential)."""
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


class EnvValue(str):
    """A default read from an environment variable: a ``str`` that remembers the variable's name."""

    env_name: str

    def __new__(cls, value: str, env_name: str) -> EnvValue:
        self = super().__new__(cls, value)
        self.env_name = env_name
        return self


def env(name: str, default: Any = None) -> Any:
    """The default of an option read from ``name``: an ``EnvValue`` when the variable is set and not blank,
    else ``default``. Give string defaults (``"8003"``, not ``8003``) so argparse passes them through the
    option's ``type`` as it does a typed value.

    >>> import os; os.environ["X_DEMO"] = "7"; env("X_DEMO", "1"), env("X_DEMO").env_name
    ('7', 'X_DEMO')
    """
    import os

    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return EnvValue(value.strip(), name)


def parse_bool(text: str) -> bool:
    """argparse ``type`` for on/off words: 1/0, true/false, yes/no, on/off (any case).

    >>> parse_bool("ON"), parse_bool("0")
    (True, False)
    """
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off (use one of {', '.join(TRUE_WORDS + FALSE_WORDS)})")


def positive_int(text: str) -> int:
    """argparse ``type`` for a whole number above 0 (workers, seconds, pixels...).

    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def port_number(text: str) -> int:
    """argparse ``type`` for a TCP port, 1 to 65535.

    >>> port_number("8003")
    8003
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)")
    return value


def finite_float(text: str) -> float:
    """argparse ``type`` for a finite number (no nan / inf).

    >>> finite_float("1.5")
    1.5
    """
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    """argparse ``type`` for a finite number of 0 or more.

    >>> non_negative_float("0")
    0.0
    """
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def unit_float(text: str) -> float:
    """argparse ``type`` for a score from 0 to 1 (thresholds).

    >>> unit_float("0.5")
    0.5
    """
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score from 0 to 1")
    return value


CONCEPT_THRESHOLD_ENV = "LABEL_ANYTHING_CONCEPT_THRESHOLD"


def add_concept_threshold_argument(group: argparse.ArgumentParser | Any, what: str) -> None:
    """``--concept-threshold`` (SAM 3), one rule for serve, segment and concepts-to-masks: a score in [0, 1],
    env ``LABEL_ANYTHING_CONCEPT_THRESHOLD``, default the official 0.5. ``what``: what it keeps, for --help."""
    from label_anything.engine.concepts import DEFAULT_CONCEPT_THRESHOLD

    group.add_argument("--concept-threshold", type=unit_float, metavar="SCORE",
                       default=env(CONCEPT_THRESHOLD_ENV, str(DEFAULT_CONCEPT_THRESHOLD)),
                       help=f"{what} scoring above SCORE, from 0 to 1 [env {CONCEPT_THRESHOLD_ENV}; default: "
                            f"%(default)s, SAM 3's own]")


def concept_map(text: str) -> dict[str, tuple[str, ...]]:
    """argparse ``type`` for ``--concepts`` (``engine.concepts.parse_concepts_spec``): label → phrases; ``LABEL=``
    (no phrase) keeps the label out.

    >>> concept_map("person=person, pedestrian;car; ;tree=")
    {'person': ('person', 'pedestrian'), 'car': ('car',), 'tree': ()}
    """
    from label_anything.engine.concepts import parse_concepts_spec

    try:
        return dict(parse_concepts_spec(text))
    except PromptError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, and which validates ``EnvValue`` defaults.

    Sub-parsers made from it are of the same class (argparse's default), so every command gets both.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:  # argparse's hook for each value
        if not isinstance(arg_string, EnvValue):
            return super()._get_value(action, arg_string)
        name = arg_string.env_name
        shown = "…" if any(word in name for word in SECRET_WORDS) else str(arg_string)
        convert = parse_bool if isinstance(action, argparse.BooleanOptionalAction) else action.type
        try:
            value = convert(str(arg_string)) if callable(convert) else str(arg_string)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, argparse.ArgumentTypeError) else f"not a valid {_type_name(convert)}"
            self.error(f"{name}={shown!r}: {reason.replace(str(arg_string), shown)}")
        if action.choices is not None and value not in action.choices:
            self.error(f"{name}={shown!r}: choose one of {', '.join(map(str, action.choices))}")
        return value


def _type_name(convert: Any) -> str:
    return {int: "whole number", float: "number"}.get(convert, getattr(convert, "__name__", "value"))


def print_error(message: str) -> None:
    """One line on stderr, as every command reports a mistake."""
    print(f"label-anything: error: {message}", file=sys.stderr)


SAM_CONFIGS = tuple(sorted({config for configs in MODEL_CONFIGS.values() for config in configs}))


MODEL_HELP = (
    "model family: sam, sam_hq, mobile_sam, sam2 (SAM 2.1), sam3 (SAM 3: concepts too; the [sam3] extra), "
    "classical (no weights: OpenCV GrabCut), or auto (a checkpoint found in the cache directory, never sam3, "
    "else classical)"
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every model-using command shares (names as in the original label_anything)."""
    g = parser.add_argument_group("model")
    g.add_argument("--model-name", "--model", dest="model_name", type=str.lower, choices=MODEL_NAMES,
                   default=env("LABEL_ANYTHING_MODEL", "auto"), metavar="NAME",
                   help=MODEL_HELP + " [env LABEL_ANYTHING_MODEL; default: %(default)s]")
    g.add_argument("--sam-config", dest="sam_config", type=str.lower,
                   choices=SAM_CONFIGS, metavar="CONFIG", default=env("LABEL_ANYTHING_SAM_CONFIG"),
                   help="architecture: vit_b/vit_l/vit_h (sam), also vit_tiny (sam_hq), vit_t (mobile_sam), "
                        "tiny/small/base_plus/large (sam2), sam3 (sam3); default: vit_b, vit_t for mobile_sam, "
                        "tiny for sam2, sam3 for sam3 "
                        "[env LABEL_ANYTHING_SAM_CONFIG]")
    g.add_argument("--sam-checkpoint-file", "--checkpoint", dest="checkpoint",
                   default=env("LABEL_ANYTHING_CHECKPOINT"),
                   help="checkpoint file; default: the official one in the cache directory "
                        "(see `label-anything download`) [env LABEL_ANYTHING_CHECKPOINT]")
    g.add_argument("--device", type=_device, default=env("LABEL_ANYTHING_DEVICE", "auto"),
                   help="auto, cpu, cuda, cuda:N or mps [env LABEL_ANYTHING_DEVICE; default: %(default)s]")
    g.add_argument("--decoder", type=str.lower, choices=["torch", "onnx", "auto"],
                   default=env("LABEL_ANYTHING_DECODER", "torch"),
                   help="mask decoder runtime on CPU: torch, onnx (ONNX Runtime, faster clicks; needs the [onnx] "
                        "extra) or auto (time both at start-up, keep the faster) [env LABEL_ANYTHING_DECODER; "
                        "default: %(default)s]")
    g.add_argument("--cache-dir", type=Path, default=env("LABEL_ANYTHING_CACHE"),
                   help="where checkpoints and embeddings are kept [env LABEL_ANYTHING_CACHE; "
                        "default: ~/.cache/label-anything]")
    g.add_argument("--cache-disk-gb", type=non_negative_float, default=env(CACHE_DISK_ENV, str(DEFAULT_CACHE_DISK_GB)),
                   metavar="GB",
                   help="most disk the embedding cache (CACHE_DIR/embeddings) may hold; the least recently used "
                        "entries go first. A SAM 1 embedding takes 2 MiB, SAM 2.1 8 MiB: give precompute room "
                        f"for the whole project; 0 = no disk cache [env {CACHE_DISK_ENV}; default: %(default)s]")


CACHE_DISK_ENV = "LABEL_ANYTHING_CACHE_DISK_GB"


DEFAULT_CACHE_DISK_GB = 4.0


def _device(text: str) -> str:
    """argparse ``type`` for --device: the word is checked here, its existence when the model loads."""
    word = text.strip().lower()
    name, _, index = word.partition(":")
    if word in ("auto", "cpu", "cuda", "mps") or (name == "cuda" and index.isdigit()):
        return word
    raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


def load_model_from_args(args: argparse.Namespace):
    """Load the model the options name; warns when `auto` fell back to the weight-free engine."""
    from label_anything.engine import load_model

    model = load_model(args.model_name, args.sam_config, args.checkpoint, device=args.device,
                       cache_dir=args.cache_dir, decoder=getattr(args, "decoder", "torch"))
    if args.model_name == "auto" and model.info.name == "classical":
        log.warning("no SAM checkpoint in the cache: using the weight-free classical engine (GrabCut); for "
                    "real SAM masks run `label-anything download mobile_sam` or pass --model-name and --checkpoint")
    return model


def shared_level_from_args(args: argparse.Namespace) -> RedisLevel | None:
    """The Redis level ``--cache-url`` / ``--cache-ttl`` ask for, or None; checks Redis once at start."""
    from label_anything.engine.redis_cache import RedisLevel

    url = getattr(args, "cache_url", None)
    if not url:
        return None
    level = RedisLevel(url, ttl_s=args.cache_ttl)
    if level.ping():
        log.info("shared embedding cache: Redis at %s (entries expire after %d s unused)",
                 level.display_url, level.ttl_s)
    return level


def add_cache_url_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """``--cache-url`` and ``--cache-ttl``, shared by ``serve`` and ``precompute``."""
    parser.add_argument(
        "--cache-url",
        default=env(CACHE_URL_ENV),
        metavar="redis://HOST:PORT/DB",
        help="share image embeddings between backend processes and machines through Redis (needs the "
        "[redis] extra); run Redis with maxmemory and maxmemory-policy allkeys-lru. Without it, processes "
        f"on one machine still share the disk cache in --cache-dir [env {CACHE_URL_ENV}]",
    )
    parser.add_argument(
        "--cache-ttl",
        type=positive_int,
        default=env(CACHE_TTL_ENV, str(DEFAULT_TTL_S)),
        metavar="SECONDS",
        help=f"a Redis entry unused this long expires [env {CACHE_TTL_ENV}; default: %(default)s (a week)]",
    )


# -- command line ------------------------------------------------------------------------------------
def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ray-address`` and the pool options, shared by ``boxes-to-masks`` and ``precompute``."""
    g = parser.add_argument_group(
        "Ray cluster",
        "With --ray-address the images are spread over a pool of Ray workers, each loading the model once; "
        "without it everything runs in this process. Every node needs label-anything installed and the "
        "checkpoint readable at the same path (--checkpoint, or the cache directory for the default one).",
    )
    g.add_argument("--ray-address", default=env(RAY_ADDRESS_ENV), metavar="ADDRESS",
                   help="auto (the cluster this machine belongs to), HOST:PORT (a head node), "
                        f"ray://HOST:10001 (Ray Client) or {LOCAL_CLUSTER} (a Ray instance started for this run) "
                        f"[env {RAY_ADDRESS_ENV}]")
    g.add_argument("--ray-workers", type=positive_int, metavar="N",
                   help="workers (model copies) to start; default: one per GPU of the cluster, else one per "
                        "--ray-cpus-per-worker CPUs")
    g.add_argument("--ray-gpus-per-worker", type=non_negative_float, metavar="G",
                   help="GPUs each worker reserves; fractions share a GPU (default: 1 when the cluster has GPUs, "
                        "else 0)")
    g.add_argument("--ray-cpus-per-worker", type=positive_int, metavar="C",
                   help="CPUs each worker reserves, also its PyTorch threads (default: 1 with GPUs, else up to 4)")


MAX_PIXELS_ENV = "LABEL_ANYTHING_MAX_IMAGE_PIXELS"


def add_image_host_arguments(parser: argparse.ArgumentParser | Any, *, max_pixels: bool = True) -> None:
    """``--allow-image-host`` (and ``--max-image-pixels``): what ``serve``, ``precompute`` and ``convert`` may
    fetch. One definition, so that a project ``precompute`` reads is exactly what ``serve`` will read."""
    from label_anything.imaging.decode import DEFAULT_MAX_PIXELS
    from label_anything.imaging.fetch import ALLOW_HOSTS_ENV, ALLOW_HOSTS_OPTION

    parser.add_argument(
        ALLOW_HOSTS_OPTION, dest="allow_image_hosts", action="append", default=None, metavar="HOST",
        help="also fetch image URLs from HOST, and follow redirects to it (host, host:port or *.domain; "
        "repeatable). Without it only Label Studio's own origin (and a URL's own origin, for redirects) is "
        f"fetched from [env {ALLOW_HOSTS_ENV}, comma separated]",
    )
    if max_pixels:
        parser.add_argument(
            "--max-image-pixels", type=positive_int, default=env(MAX_PIXELS_ENV, str(DEFAULT_MAX_PIXELS)),
            help="refuse images larger than this many pixels, read from the file header before decoding "
            f"(decompression bombs) [env {MAX_PIXELS_ENV}; default: %(default)s]",
        )


def allowed_image_hosts(args: argparse.Namespace) -> tuple[str, ...]:
    """The image host allow-list: ``--allow-image-host`` options, else the environment variable."""
    import os

    from label_anything.imaging.fetch import ALLOW_HOSTS_ENV, parse_allowed_hosts

    entries = args.allow_image_hosts
    if entries is None:
        entries = [os.environ.get(ALLOW_HOSTS_ENV, "")]
    return parse_allowed_hosts(entries)
