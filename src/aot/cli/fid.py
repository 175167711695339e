"""`python -m aot fid fetch-assets|train-features|reference|measure|aggregate|compare-references`: FID of
sample sets (aot.fid, aot.fid_reference).

    python -m aot fid measure --samples X.npz --ref ref.npz --out X.json [--repeat 0]
    python -m aot fid measure --samples rep0.npz rep1.npz --ref ref.npz --out rep0.json rep1.json [--repeat 0 1]

With several sample sets (one --out each; --repeat default 0, 1, ...) the feature network and the
reference statistics are loaded once, and each JSON is the one a separate measurement writes.
"""

from __future__ import annotations

import os

from ..errors import UserError
from ..runtime import set_threads
from .options import ArgParser, add_device, bool_flag, number_arg

# = aot.fid.INCEPTION_URL, repeated so that `--help` needs no numpy or torch (tests check both are clean-fid's)
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
# = aot.fid_reference.EDM_REFERENCE_URL and EDM_REFERENCE_KEY, for the same reason
EDM_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
EDM_KEY = "edm-cifar10"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("fid", help="FID: assets, reference statistics, measurements, aggregates",
                                   description="FID of sample sets: assets, reference statistics, measurements "
                                               "and the repeat aggregate.")
    sub = parser.add_subparsers(dest="fid_command", required=True, parser_class=ArgParser, metavar="COMMAND")

    p = sub.add_parser("fetch-assets", help="download the Inception weights and CIFAR-10 statistics (login node)")
    p.add_argument("--cache-dir", "--dest", dest="cache_dir", default=None,
                   help="asset folder (default: $AOT_FID_CACHE; required for the Inception weights)")
    p.add_argument("--only", nargs="+", choices=["inception", "cifar10", EDM_KEY], default=["inception", "cifar10"],
                   help=f"which assets (default: inception and cifar10; {EDM_KEY}: EDM's reference statistics "
                        "cifar10-32x32.npz, with --edm-reference-sha256)")
    p.add_argument("--inception-url", default=INCEPTION_URL, help="URL of the Inception weights (default: clean-fid's)")
    p.add_argument("--inception-sha256", default=None,
                   help="expected SHA-256 of the weights (default: the published one for clean-fid's URL; for "
                        "another URL, the first download's is recorded and checked on every load)")
    p.add_argument("--stats-url", default=None, help="URL of the CIFAR-10 statistics (default: clean-fid's)")
    p.add_argument("--edm-reference-url", default=EDM_URL, help="URL of EDM's cifar10-32x32.npz (default: EDM's)")
    p.add_argument("--edm-reference-sha256", default=None,
                   help=f"expected SHA-256 of EDM's cifar10-32x32.npz (required with --only ... {EDM_KEY})")
    p.add_argument("--timeout", type=number_arg("--timeout", positive=True), default=60.0,
                   help="seconds without data before an attempt fails (default: 60)")
    bool_flag(p, "force", False, "download even if a valid file is present")
    p.set_defaults(func=fetch_assets)

    p = sub.add_parser("train-features", help="train the offline feature network on a dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=_positive("--epochs"), default=10)
    p.add_argument("--seed", type=number_arg("--seed", int), default=0)
    p.add_argument("--feature-dim", type=_positive("--feature-dim"), default=128)
    p.add_argument("--width", type=_positive("--width"), default=32)
    p.add_argument("--max-images", type=_positive("--max-images"), default=None)
    p.add_argument("--batch", type=_positive("--batch"), default=64, help="images per training batch")
    add_device(p)
    p.set_defaults(func=train_features)

    p = sub.add_parser("reference", help="reference statistics of a dataset, or clean-fid's precomputed ones")
    p.add_argument("--data", help="EDM-format dataset (zip or folder); with --precomputed only checked")
    p.add_argument("--precomputed", metavar="cifar10",
                   help="use clean-fid's precomputed statistics (legacy_tensorflow, train split) instead")
    p.add_argument("--edm-reference", metavar="NPZ", default=None,
                   help="use EDM's reference statistics (its cifar10-32x32.npz, from fetch-assets) instead")
    p.add_argument("--edm-sha256", default=None, help="expected SHA-256 of the --edm-reference file (required with it)")
    p.add_argument("--features", default="inception", help="'inception' or a feature network file")
    p.add_argument("--out", required=True)
    p.add_argument("--max-images", type=_positive("--max-images"), default=None)
    _compute_options(p)
    p.set_defaults(func=reference)

    p = sub.add_parser("measure", help="FID of sample sets against reference statistics",
                       description="FID of a sample set against reference statistics, or of several (one --out "
                                   "each): the feature network and the reference are loaded once, and each JSON "
                                   "is the one a separate measurement of its set writes.")
    p.add_argument("--samples", required=True, nargs="+", metavar="X.npz", help="sample set(s) (npz)")
    p.add_argument("--ref", required=True)
    p.add_argument("--features", default=None,
                   help="'inception' or a feature network file (default: the reference's)")
    p.add_argument("--repeat", type=number_arg("--repeat", int, nonneg=True), nargs="+", default=None,
                   help="index of each measurement in the repeat protocol, one per sample set "
                        "(default: 0, 1, ...)")
    p.add_argument("--out", required=True, nargs="+", metavar="X.json", help="result JSON, one per sample set")
    _compute_options(p)
    p.set_defaults(func=measure)

    p = sub.add_parser("compare-references", help="FID of one sample set against two or more references",
                       description="FID of one sample set against each reference (files of `reference`, one "
                                   "feature space), its features computed once: how far apart two references put "
                                   "the same images, e.g. EDM's statistics and clean-fid's.")
    p.add_argument("--samples", required=True, metavar="X.npz", help="the sample set (npz)")
    p.add_argument("--ref", required=True, nargs="+", metavar="REF.npz", help="reference statistics, two or more")
    p.add_argument("--features", default=None,
                   help="'inception' or a feature network file (default: the references')")
    p.add_argument("--out", default=None, metavar="X.json", help="write the comparison as JSON")
    _compute_options(p)
    p.set_defaults(func=compare_references)

    p = sub.add_parser("aggregate", help="min / mean / std of repeated measurements")
    p.add_argument("results", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=aggregate)


def _positive(name: str):
    return number_arg(name, int, positive=True)


def _compute_options(p) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="folder of clean-fid assets (default: $AOT_FID_CACHE; required for Inception)")
    p.add_argument("--batch", type=_positive("--batch"), default=100, help="images per feature batch")
    add_device(p)


def fetch_assets(args) -> None:
    from .. import fid

    fid.fetch_assets(cache_dir=args.cache_dir, only=args.only, inception_url=args.inception_url,
                     inception_sha256=args.inception_sha256, stats_url=args.stats_url, timeout=args.timeout,
                     force=args.force, edm_url=args.edm_reference_url, edm_sha256=args.edm_reference_sha256)


def train_features(args) -> None:
    from .. import fid

    set_threads(args.threads)
    fid.train_features(data=args.data, out=args.out, epochs=args.epochs, seed=args.seed,
                       feature_dim=args.feature_dim, width=args.width, max_images=args.max_images,
                       device=args.device, batch=args.batch)


def reference(args) -> None:
    from .. import fid

    set_threads(args.threads)
    fid.reference(out=args.out, data=args.data, precomputed=args.precomputed, features=args.features,
                  max_images=args.max_images, cache_dir=args.cache_dir, device=args.device, batch=args.batch,
                  edm_reference=args.edm_reference, edm_sha256=args.edm_sha256)


def compare_references(args) -> None:
    from .. import fid_reference

    set_threads(args.threads)
    fid_reference.compare_references(samples=args.samples, refs=args.ref, out=args.out, features=args.features,
                                     cache_dir=args.cache_dir, device=args.device, batch=args.batch)


def measure(args) -> None:
    from .. import fid

    set_threads(args.threads)
    def one(values):  # one set: the single-set call
        return values[0] if values is not None and len(values) == 1 else values

    if len(args.samples) == 1 and len(args.out) == 1:
        samples, out, repeat = args.samples[0], args.out[0], one(args.repeat)
    else:
        samples, out, repeat = args.samples, args.out, args.repeat
    fid.measure(samples=samples, ref=args.ref, out=out, features=args.features, repeat=repeat,
                cache_dir=args.cache_dir, device=args.device, batch=args.batch)


def aggregate(args) -> None:
    from .. import fid

    fid.aggregate(results=args.results, out=args.out)


def check_generated_measurement(args) -> bool:
    """Before a generation command with --fid-out makes its sets: the options agree, and the reference
    and the feature network are there and fit each other (a missing asset fails before any work).
    Returns whether the sets are measured after generation."""
    if args.fid_out is None and args.fid_ref is None:
        return False
    if args.fid_out is None or args.fid_ref is None:
        raise UserError("--fid-ref and --fid-out go together: the reference to measure against and one "
                        "result file per --out")
    if len(args.fid_out) != len(args.out):
        raise UserError(f"--out names {len(args.out)} sample set(s) but --fid-out names {len(args.fid_out)} "
                        "file(s); give one --fid-out per --out")
    if set(map(os.path.abspath, args.fid_out)) & set(map(os.path.abspath, args.out)):
        raise UserError("--fid-out names a file that --out names: the measurement would replace a sample set")
    from .. import fid

    fid.open_measurement(args.fid_ref, args.fid_features, args.fid_cache_dir, device="cpu")
    return True


def measure_generated(args) -> None:
    """After a generation command made its sets (rank 0 of the job): measure each set into its
    --fid-out, as `aot fid measure` does, then remove the sets' shard folders, kept so far so that a
    failed measurement (whose job loses its outputs) costs a rerun only the merge. A SIGTERM or
    SIGUSR1 (time limit, preemption) ends the measurement at once with EXIT_PREEMPTED, as it
    ends the generation: nothing is written, the shards stay, and the requeued job measures again.
    So does a Slurm job whose end time is less than --slurm-margin seconds away: then the measurement
    does not start, and should it still run at half the margin it is given up as at a signal."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from .. import fid
    from ..runtime import Preemption
    from ..samples import remove_shards

    with Preemption(margin=getattr(args, "slurm_margin", 0.0), raise_on_signal=True, announce=False) as stop:
        stop.stop_at_deadline("the sets' shards are kept (the rerun merges and measures them)")
        fid.measure(samples=args.out, ref=args.fid_ref, out=args.fid_out, features=args.fid_features,
                    cache_dir=args.fid_cache_dir, device=args.device, batch=args.fid_batch)
    for out in args.out:
        remove_shards(out)


class FinishedSets:
    """`--kept-dir DIR` of a generation command (aot.kept): before generation, missing outputs are
    linked back from their records in DIR (rank 0); then each set, once written or kept, is measured
    at once into its --fid-out (a result already there that names this very set, reference and
    feature network is kept, aot.fid.current_result), its shards are removed, and the set and its
    result are recorded in DIR, so that whatever is finished survives the removal of the job's
    outputs (Snakemake's, before a requeued or failed group runs again)."""

    def __init__(self, args, measured: bool) -> None:
        from ..kept import check_kept_dir

        self.args, self.measured = args, measured
        self.folder = check_kept_dir(args.kept_dir, [*args.out, *(args.fid_out or [])])
        self.index = {os.path.abspath(o): i for i, o in enumerate(args.out)}
        self._session = None

    def files(self, i: int) -> list[str]:
        """The outputs of set i: its sample set and, when measured, its result."""
        return [self.args.out[i], *([self.args.fid_out[i]] if self.measured else [])]

    def restore(self) -> None:
        """Link missing outputs back from their records (rank 0, once the command's settings are
        checked and its network loaded, before the first set is looked at)."""
        from ..kept import restore

        restore(self.folder, [self.files(i) for i in range(len(self.args.out))])

    def after_set(self, out) -> None:
        """Set `out` is written or kept (rank 0): measure it unless its result is current, then
        record the set and its result."""
        from ..kept import keep
        from ..samples import remove_shards

        i = self.index[os.path.abspath(out)]
        if self.measured:
            self._measure(i)
            remove_shards(self.args.out[i])
        keep(self.folder, self.files(i))

    def _measure(self, i: int) -> None:
        from .. import fid
        from ..runtime import Preemption, resolve_device

        args = self.args
        if self._session is None:  # the feature network and the reference, loaded once
            device = resolve_device(args.device)
            self._session = (device, *fid.open_measurement(args.fid_ref, args.fid_features, args.fid_cache_dir,
                                                           device))
        device, reference_stats, space = self._session
        samples, out = args.out[i], args.fid_out[i]
        if fid.current_result(out, samples, i, args.fid_ref, reference_stats, space) is not None:
            print(f"measure: kept {out}: measured earlier from this sample set, reference and feature network",
                  flush=True)
            return
        if os.path.lexists(out):  # a result of something else (a set made again): never left beside the set
            os.unlink(out)
        with Preemption(margin=getattr(args, "slurm_margin", 0.0), raise_on_signal=True, announce=False) as stop:
            stop.stop_at_deadline("the sets' shards and the finished sets' records are kept (the rerun restores, "
                                  "merges and measures them)")
            fid.measure_set(samples, out, i, args.fid_ref, reference_stats, space, device, args.fid_batch)


def finished_sets(args, measured: bool) -> FinishedSets | None:
    """The FinishedSets of a generation command with --kept-dir (the folder checked); None without."""
    if getattr(args, "kept_dir", None) is None:
        return None
    return FinishedSets(args, measured)
