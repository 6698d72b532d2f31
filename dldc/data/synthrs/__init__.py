"""SynthRS: the embedded synthetic remote-sensing image-caption dataset.

SynthRS draws small top-down "aerial" scenes from a seed with numpy and Pillow only, so the
whole pipeline can run offline in seconds. Every image is built from land-cover layers drawn
into a segmentation mask and then coloured with textures (value noise, crop rows, dune
ridges, roof shading, shadows...). Its captions are written from the generator's own ground
truth, so they describe what is really in the picture and where.

Scenes (``SCENES``)
    farmland, residential, forest, river, lake, beach, airport, parking, industrial, desert.

Land cover (``LAND_COVER``: mask value, name, palette colour of the mask PNGs)
    0 bare_soil ``#966e50``   1 water    ``#1e5aaa``   2 tree ``#1e6e28``   3 grass ``#82be50``
    4 crop      ``#dcd25a``   5 building ``#c83c3c``   6 road ``#464646``   7 sand  ``#f0dca0``
    8 pavement  ``#aaaaaf``   9 vehicle  ``#e628d2``

    read from the shipped class table ``dldc/data/classes/synthrs.json``
    (:mod:`dldc.data.class_tables`), the one the EGL and the segmentation stage read masks with.

Positions
    Captions place things on a 3x3 grid (:data:`dldc.data.vocabulary.CELLS`): top left, top,
    top right, left, center, right, bottom left, bottom, bottom right.

Caption noise (``NOISE_KINDS``)
    Each caption is independently replaced with probability ``noise_rate`` by one of:

    * ``other_scene``  — a clean caption generated for a different scene class (any of
      ``SCENES``, from a freshly drawn layout of that scene);
    * ``generic``      — one of ``GENERIC_CAPTIONS``, such as "an aerial image";
    * ``truncated``    — the clean caption cut after its first 1-3 words;
    * ``wrong_layout`` — a caption of the right scene whose grid cells all moved to cells
      the caption did not name (a clean caption naming no cell is swapped for one that does).

    A noisy caption never equals its clean caption. The kind is drawn uniformly from
    ``noise_kinds`` (default: all four). ``other_scene`` is the only kind whose damage lands on
    *another* scene's prompts (a caption that reads like a beach on a desert image teaches
    "beach" → desert); the others stay within the image's scene.

Output of :func:`write_synthrs` (the Karpathy layout RSICD is distributed in)::

    out/
      dataset_synthrs.json              Karpathy JSON: images, splits, sentences
      images/<scene>_<NNNN>.png         RGB images
      masks/<scene>_<NNNN>.png          mode "P" masks; palette = LAND_COVER colours
      txtclasses_synthrs/<scene>.txt    image file names per scene, one a line
      palette.json                      LAND_COVER as [{"index", "name", "color"}]
      truth/noise_labels.jsonl          per caption: filename, sentid, noisy, kind, clean,
                                        source_scene (cleaners must never read truth/)
      truth/layouts.jsonl               per image: filename, scene, layout (ground truth)
      synthrs.json                      generation parameters and counts (no timestamps)

Same arguments, same bytes: every image has its own random streams derived from
``(seed, image index)``, JSON keys are sorted and PNGs are encoded with fixed options.

Modules: :mod:`~dldc.data.synthrs.landcover` (the classes and how they look),
:mod:`~dldc.data.synthrs.geometry` (drawing primitives), :mod:`~dldc.data.synthrs.landscapes` and
:mod:`~dldc.data.synthrs.built_up` (the scene painters), :mod:`~dldc.data.synthrs.scenes`
(rendering), :mod:`~dldc.data.synthrs.captions` (clean captions and noise),
:mod:`~dldc.data.synthrs.writer` (the files).
"""

from dldc.data.synthrs.captions import GENERIC_CAPTIONS, MIN_CAPTIONS_PER_SCENE, NOISE_KINDS, clean_captions
from dldc.data.synthrs.landcover import LAND_COVER
from dldc.data.synthrs.scenes import MIN_SIZE, SCENES, SceneSample, render_scene
from dldc.data.synthrs.writer import DATASET_NAME, FORMAT_VERSION, SPLITS, write_synthrs

__all__ = [
    "DATASET_NAME",
    "FORMAT_VERSION",
    "GENERIC_CAPTIONS",
    "LAND_COVER",
    "MIN_CAPTIONS_PER_SCENE",
    "MIN_SIZE",
    "NOISE_KINDS",
    "SCENES",
    "SPLITS",
    "SceneSample",
    "clean_captions",
    "render_scene",
    "write_synthrs",
]
