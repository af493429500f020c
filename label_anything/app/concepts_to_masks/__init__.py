"""``label-anything concepts-to-masks``: every instance of named concepts in every image of a dataset, as COCO.

SAM 3 answers a phrase ("person", "red car") with every instance it finds in an image. Over a folder, a COCO
file's images or a Label Studio project, each image is encoded once (or its embedding read from the cache
``precompute`` fills), then each phrase is one query. The output is a COCO instances file: the images, one
category per concept, and every instance as an annotation with ``segmentation`` (compressed RLE), ``bbox`` (the
mask's tight box), ``area``, ``score``, ``concept`` (the phrase) and ``sam3_box`` (the model's own box), ready for
pycocotools, training, or ``import-coco`` into Label Studio.

An image that cannot be used (unreadable, too large, refused by the fetcher, of another size than its COCO
entry says...) is counted under its reason and left out; no input stops the run. Resumable, bounded memory:
one embedding alive at a time, one progress line per image in ``OUT.partial.jsonl`` (``app.journal``, as
``boxes-to-masks``), OUT written atomically at the end. A progress file of a run with another model, other
concepts, threshold or input is refused rather than mixed in (``restart`` discards it).

The modules, in the order a run uses them:

* ``concept_spec``: ``--concepts`` / ``--concept`` → categories and their phrases, the output's categories;
* ``sources``: the images of a folder, a COCO file or a project, loaded one at a time, the skip reasons;
* ``image_job``: one image: embedding, one query per phrase, instances as COCO fields (here or on Ray);
* ``output``: the progress records, cross-phrase duplicates, the COCO file;
* ``run``: ``concepts_to_masks``, the loop and its ``ConceptsReport``.

The command line (``label_anything.cli.concepts_to_masks``) only parses options and prints the summary.
"""

from label_anything.app.concepts_to_masks.concept_spec import (
    Category,
    ConceptSet,
    ConceptSpecError,
    coco_concepts,
    concept_set,
    output_categories,
    parse_category,
    parse_concepts,
)
from label_anything.app.concepts_to_masks.image_job import MODEL_BOX_FIELD, ImageAnswer, find_concepts
from label_anything.app.concepts_to_masks.output import Record, build_coco, merge_duplicates
from label_anything.app.concepts_to_masks.run import (
    CONCEPT_MODELS,
    QUERYING,
    ConceptsReport,
    check_concept_model,
    concept_model_refusal,
    concepts_to_masks,
)
from label_anything.app.concepts_to_masks.sources import (
    NOT_ALLOWED,
    NOT_AN_IMAGE_ENTRY,
    TOO_LARGE,
    ImageItem,
    ImageSource,
    coco_source,
    folder_source,
    project_source,
)

__all__ = [
    "CONCEPT_MODELS",
    "MODEL_BOX_FIELD",
    "NOT_ALLOWED",
    "NOT_AN_IMAGE_ENTRY",
    "QUERYING",
    "TOO_LARGE",
    "Category",
    "ConceptSet",
    "ConceptSpecError",
    "ConceptsReport",
    "ImageAnswer",
    "ImageItem",
    "ImageSource",
    "Record",
    "build_coco",
    "check_concept_model",
    "coco_concepts",
    "coco_source",
    "concept_model_refusal",
    "concept_set",
    "concepts_to_masks",
    "find_concepts",
    "folder_source",
    "merge_duplicates",
    "output_categories",
    "parse_category",
    "parse_concepts",
    "project_source",
]
