"""``label-anything concepts-to-masks``: the options, and the JSON summary printed on stdout.

The work is ``label_anything.app.concepts_to_masks.concepts_to_masks``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from label_anything.app.concepts_to_masks import (
    MODEL_BOX_FIELD,
    Category,
    ConceptSpecError,
    ConceptsReport,
    check_concept_model,
    coco_concepts,
    coco_source,
    concept_set,
    concepts_to_masks,
    folder_source,
    parse_category,
    parse_concepts,
    project_source,
)
from label_anything.app.concepts_to_masks.run import COMMAND
from label_anything.app.ray_pool import PoolOptions
from label_anything.cli.options import (
    add_concept_threshold_argument,
    add_image_host_arguments,
    add_model_arguments,
    add_ray_arguments,
    allowed_image_hosts,
    env,
    load_model_from_args,
    positive_int,
)
from label_anything.engine.concepts import DUPLICATE_IOU
from label_anything.errors import LabelAnythingError

NO_CONCEPTS = ("no concepts to look for: give --concepts 'person=person,pedestrian;car=car' or --concept cat "
               "(with a COCO file, its category names are the default)")


def _concepts(text: str) -> list[Category]:
    try:
        return parse_concepts(text)
    except ConceptSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _concept(text: str) -> Category:
    try:
        return parse_category(text)
    except ConceptSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_concepts_to_masks_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``label-anything concepts-to-masks`` to the CLI's sub-commands."""
    p = subparsers.add_parser(
        COMMAND,
        help="find every instance of named concepts in a folder, a COCO file's images or a project (SAM 3)",
        description="Find every instance of each concept (a short phrase: 'person', 'red car') in every image, "
        "with SAM 3, and write a COCO file: the images, one category per concept, each instance an annotation "
        "with 'segmentation' (compressed RLE), 'bbox' (the mask's tight box), 'area', 'score', 'concept' (the "
        f"phrase that found it) and '{MODEL_BOX_FIELD}' (the model's own box, [x, y, w, h]). Images: a folder "
        "(--images DIR), a COCO file's images (COCO.json --images DIR; its category names are the default "
        "concepts) or a Label Studio project (--project ID). Each image is encoded once for all phrases; "
        "images precompute already encoded (same --cache-dir and model) are not encoded again (this command "
        "reads that cache, it does not add to it: run precompute first to encode once for several runs). "
        "Images that cannot be used are counted by reason and left out. Resumable: progress is kept in "
        "OUT.partial.jsonl until OUT is written; a rerun with other concepts, threshold, model or input "
        "stops with one line instead of mixing results (--restart discards that progress). The output feeds "
        "import-coco.",
    )
    p.add_argument("coco", nargs="?", type=Path, metavar="COCO.json",
                   help="a COCO file whose images to use (with --images, the folder its file_name fields are in)")
    p.add_argument("--images", type=Path, metavar="DIR",
                   help="a folder of images (searched recursively), or the folder of COCO.json's images")
    p.add_argument("--project", type=positive_int, metavar="ID", help="a Label Studio project id, instead")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.json", help="COCO file to write")
    c = p.add_argument_group("concepts")
    c.add_argument("--concepts", dest="concepts", type=_concepts, action="extend", metavar="SPEC",
                   help="categories and their phrases: 'person=person,pedestrian;car=car' (NAME alone: the phrase "
                        "NAME). Each phrase is one query per image; instances of one category found by several "
                        f"phrases are merged when their masks overlap with IoU above {DUPLICATE_IOU} (the higher "
                        "score stays; see --keep-duplicates). Default: the COCO file's category names")
    c.add_argument("--concept", dest="concepts", type=_concept, action="append", metavar="NAME[=PHRASE,...]",
                   help="one category (repeatable; combines with --concepts, in command-line order)")
    add_concept_threshold_argument(c, "keep the instances")
    c.add_argument("--keep-duplicates", dest="merge", action="store_false",
                   help="keep every instance of every phrase, even the same object found by two phrases")
    p.add_argument("--restart", action="store_true",
                   help="discard the progress of an unfinished run with other options instead of stopping")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    ls = p.add_argument_group("Label Studio (--project)")
    ls.add_argument("--label-studio-url", default=env("LABEL_STUDIO_URL"), help="[env LABEL_STUDIO_URL]")
    ls.add_argument("--label-studio-api-key", default=env("LABEL_STUDIO_API_KEY"),
                    help="access token [env LABEL_STUDIO_API_KEY]")
    ls.add_argument("--local-files-root", type=Path, default=env("LOCAL_FILES_DOCUMENT_ROOT"),
                    help="read /data/local-files/ images from this folder [env LOCAL_FILES_DOCUMENT_ROOT]")
    add_image_host_arguments(ls)
    add_model_arguments(p)
    p.set_defaults(model_name=env("LABEL_ANYTHING_MODEL", "sam3"))
    add_ray_arguments(p)
    p.set_defaults(func=cmd_concepts_to_masks)
    return p


def cmd_concepts_to_masks(args: argparse.Namespace) -> int:
    from label_anything.app.model_options import ModelOptions
    from label_anything.engine.cache import EmbeddingCache
    from label_anything.engine.weights import default_cache_dir

    if args.project is not None and (args.coco is not None or args.images is not None):
        raise LabelAnythingError("give the images one way: --images DIR, COCO.json --images DIR, or --project ID")
    if args.project is None and args.images is None:
        raise LabelAnythingError("say where the images are: --images DIR (with or without COCO.json), or --project ID")
    check_concept_model(args.model_name, args.sam_config, args.checkpoint, args.cache_dir)
    given = concept_set(args.concepts) if args.concepts else None
    if given is None and args.coco is None:
        raise LabelAnythingError(NO_CONCEPTS)
    fetcher = None
    try:
        if args.project is not None:
            from label_anything.imaging.fetch import ImageFetcher

            fetcher = ImageFetcher(args.label_studio_url, args.label_studio_api_key, args.local_files_root,
                                   max_pixels=args.max_image_pixels, allowed_hosts=allowed_image_hosts(args))
            source = project_source(args.project, fetcher)
        elif args.coco is not None:
            source = coco_source(args.coco, args.images, args.max_image_pixels)
        else:
            source = folder_source(args.images, args.max_image_pixels)
        concepts = given if given is not None else coco_concepts(source.categories)
        if not len(concepts):
            raise LabelAnythingError(NO_CONCEPTS)
        cache = None
        folder = (Path(args.cache_dir) if args.cache_dir else default_cache_dir()) / "embeddings"
        if float(args.cache_disk_gb) > 0 and folder.is_dir():  # read only: no memory level, nothing written
            cache = EmbeddingCache(max_memory_bytes=0, disk_dir=folder,
                                   max_disk_bytes=int(float(args.cache_disk_gb) * 2**30))
        run: dict[str, Any] = dict(threshold=args.concept_threshold, cache=cache, merge=args.merge,
                                   restart=args.restart, progress=args.progress)
        if args.ray_address:
            from label_anything.app.ray_pool import ray_pool

            pool_options = PoolOptions(args.ray_address, args.ray_workers, args.ray_gpus_per_worker,
                                       args.ray_cpus_per_worker)
            with ray_pool(pool_options, ModelOptions.of(vars(args)).for_worker()) as pool:
                model_id = pool.model_id
                report = concepts_to_masks(None, source, concepts, args.out, pool=pool, **run)
        else:
            model = load_model_from_args(args)
            model_id = model.info.model_id
            report = concepts_to_masks(model, source, concepts, args.out, **run)
    finally:
        if fetcher is not None:
            fetcher.close()
    print(json.dumps(summary(report, model_id, args.out, ray=bool(args.ray_address))))
    # Images were given and not one could be used: most likely a wrong --images folder or COCO file.
    return 1 if report.skipped and not report.output.images else 0


def summary(report: ConceptsReport, model_id: str, out: Path, *, ray: bool) -> dict:
    """The one JSON line the command prints."""
    result = {
        "model": model_id,
        "out": str(out),
        "images": report.output.images,
        "images_queried": report.images_done,
        "images_resumed": report.images_resumed,
        "instances": report.output.instances,
        "by_category": report.output.by_category,
        "merged_duplicates": report.output.merged,
        "empty_masks": report.empty_masks,
        "encoded": report.encoded,
        "from_cache": report.from_cache,
        "skipped": dict(report.skipped),
        "failed": report.failed,
        "images_per_s": round(report.images_per_s, 3),
    }
    if ray:
        result["ray_workers"] = report.workers
    return result
