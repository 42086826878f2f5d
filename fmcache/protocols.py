"""Protocols: named bundles of the switches that decide how a classification study is run.

fmcache's own protocol improves on the FairMedFM benchmark in documented ways (the model's
own preprocessing, patient-level seeded splits, thresholds chosen on validation, ...). To
check a FairMedFM table, ``fairmedfm`` reproduces the reference code switch by switch, and
``paper`` follows the paper's text where it says something and the reference code where
it is silent. Every switch is also settable on its own.

A switch acts at one of three stages:

- ``embed``: changes the cached numbers, so it is part of the cache entry's identity (the
  model's entry gets a suffix, e.g. ``clip+pre-reference``, and never mixes with another);
- ``data``: a dataset option (``-o KEY=VALUE``), part of the dataset's cache name;
- ``probe``: how heads are scored and evaluated, recorded in the run's config.

This module is data only (no torch, no JAX): the CLI, the embed and probe stages and the
report all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from fmcache.errors import FmcacheError, UnknownNameError, did_you_mean

PROTOCOLS = ("fmcache", "fairmedfm", "paper")
STAGES = ("embed", "data", "probe")
# the cached feature kind of queries=reference: every query's unit projection, flattened (Q x D')
QUERIES_KIND = "image_proj_queries"


@dataclass(frozen=True)
class Switch:
    """One way a run can differ from the reference protocol.

    ``value`` maps each protocol to its value; ``cite`` says where the reference code
    (``fairmedfm``) and the paper (``paper``) state theirs, and ``fmcache`` why ours differs.
    A ``data`` switch sets the dataset options in ``options``: dataset key -> (option name,
    {switch value: option value}); datasets it does not name are unaffected.
    """

    name: str
    stage: str
    values: tuple[str, ...]
    value: Mapping[str, str]
    meaning: str
    cite: Mapping[str, str]
    options: Mapping[str, tuple[str, Mapping[str, str]]] = field(default_factory=dict)
    open: bool = False  # other values too (a number, a rule), which the stage itself checks

    def option_for(self, dataset: str, value: str) -> tuple[str, str] | None:
        """The dataset option (name, value) this switch's ``value`` sets on ``dataset``."""
        if dataset not in self.options:
            return None
        name, by_value = self.options[dataset]
        return (name, by_value[value]) if value in by_value else None


# citations are paths and lines of the reference code's public repository at this commit; where
# the paper's text is silent, the paper protocol follows that code
REFERENCE_COMMIT = "github.com/FairMedFM/FairMedFM at commit ac062df"
_SILENT = "not stated in the paper's text: as the reference code"

SWITCHES: dict[str, Switch] = {
    s.name: s
    for s in [
        Switch(
            name="preprocess",
            stage="embed",
            values=("model", "paper", "reference"),
            value={"fmcache": "model", "fairmedfm": "reference", "paper": "paper"},
            meaning="image preprocessing: model = each model's own resize, crop and normalisation; paper = "
            "resize 256, centre-crop 224, ImageNet statistics; reference = shorter side to 224 (bicubic), "
            "centre-crop 224, the reference code's per-dataset statistics for every model (CheXpert, MIMIC-CXR, "
            "COVID-CT-MD, ADNI 0.5056 / 0.252; GF3300 0.2756 / 0.1708; the others CLIP's)",
            cite={"fmcache": "a frozen model sees inputs like those it was trained on",
                  "fairmedfm": "datasets/utils.py:71-88 (Resize(224, BICUBIC), CenterCrop(224)); statistics "
                  "datasets/utils.py:45-53",
                  "paper": "the paper's text: resize 256, centre-crop 224, ImageNet statistics"},
        ),
        Switch(
            name="queries",
            stage="embed",
            values=("mean", "reference"),
            value={"fmcache": "mean", "fairmedfm": "reference", "paper": "reference"},
            meaning="BLIP-2's 32 Q-Former queries: mean = image is the mean of the query outputs; reference = "
            "image is query 0's output, and every query's projection is cached too (image_proj_queries) for "
            "--query-pool max; models without queries are unaffected",
            cite={"fmcache": "the queries are an unordered set of slots: query 0 is an arbitrary pick",
                  "fairmedfm": "models/blip2.py:32 (image_embeds[:, 0, :])",
                  "paper": _SILENT},
        ),
        Switch(
            name="slices",
            stage="embed",
            values=("32", "reference"),
            value={"fmcache": "32", "fairmedfm": "reference", "paper": "32"},
            meaning="3D volumes: slices each volume is resampled to before its slices go through the 2D model: a "
            "number, or reference = the reference code's per dataset (COVID-CT-MD 34, ADNI 24); part of the "
            "entry's identity (another count is refused unless --overwrite)",
            cite={"fmcache": "the paper's count",
                  "fairmedfm": "pre-processing/classification/CovidCT.ipynb:306-309 (34), "
                  "ADIN_1.5T.ipynb:692-700 (24)",
                  "paper": "the paper's text: 32 slices per volume"},
            open=True,
        ),
        Switch(
            name="split",
            stage="data",
            values=("patient", "balanced-test"),
            value={"fmcache": "patient", "fairmedfm": "balanced-test", "paper": "balanced-test"},
            meaning="patient = seeded patient-level train/val/test split; balanced-test = the test split holds "
            "equally many samples of the two groups of the dataset's first attribute (-o "
            "split=balanced-test:<attribute> for another); fmcache's stays seeded and patient-level and keeps a "
            "validation split",
            cite={"fmcache": "a patient is never on both sides; every test sample counts",
                  "fairmedfm": "sex-balanced test set by image id, random_state=0 "
                  "(pre-processing/classification/MIMIC_CXR.ipynb:2948-2979), one test file per attribute "
                  "(main.py:44-45), no validation split (main.py:80-81)",
                  "paper": _SILENT},
        ),
        Switch(
            name="cohort",
            stage="data",
            values=("all", "demographics"),
            value={"fmcache": "all", "fairmedfm": "demographics", "paper": "demographics"},
            meaning="MIMIC-CXR: all = every image, those whose patient has no MIMIC-IV record with unknown sex and "
            "age; demographics = only images whose patient has a sex record (the paper's cohort)",
            cite={"fmcache": "unknown groups stay unknown; their images still count for utility",
                  "fairmedfm": "pre-processing/classification/MIMIC_CXR.ipynb:2046 (rows with null gender dropped)",
                  "paper": "the paper's MIMIC-CXR image count excludes them"},
            options={"mimic_cxr": ("cohort", {"all": "all", "demographics": "demographics"})},
        ),
        Switch(
            name="intensity",
            stage="data",
            values=("dataset", "reference"),
            value={"fmcache": "dataset", "fairmedfm": "reference", "paper": "reference"},
            meaning="3D volumes: dataset = COVID-CT-MD through the lung window [-1350, 150] HU, ADNI between its "
            "0.5 / 99.5 percentiles; reference = COVID-CT-MD window [-1250, 250] HU, ADNI min-max per slice",
            cite={"fmcache": "one scaling per volume keeps its slices comparable",
                  "fairmedfm": "datasets/COVID_CT_MD.py:17,62-68; datasets/ADNI.py:55-60",
                  "paper": _SILENT},
            options={"covid_ct_md": ("window", {"dataset": "lung", "reference": "fairmedfm"}),
                     "adni": ("intensity", {"dataset": "percentile", "reference": "slice_minmax"})},
        ),
        Switch(
            name="malignant",
            stage="data",
            values=("scope", "reference"),
            value={"fmcache": "scope", "fairmedfm": "reference", "paper": "reference"},
            meaning="HAM10000's malignant label: scope = dx in {mel, bcc, akiec}; reference = {mel, akiec} (basal "
            "cell carcinoma counted as benign)",
            cite={"fmcache": "basal cell carcinoma is a malignant tumour",
                  "fairmedfm": "datasets/HAM10000.py:35-38",
                  "paper": _SILENT},
            options={"ham10000": ("malignant", {"scope": "scope", "reference": "reference"})},
        ),
        Switch(
            name="feature",
            stage="probe",
            values=("auto", "reference", "image", "image_proj"),
            value={"fmcache": "auto", "fairmedfm": "reference", "paper": "reference"},
            meaning="the feature trained heads learn from: auto = the projected feature where a model has one; "
            "image, image_proj = that cached kind; reference = the reference code's per model (BLIP: the 768-d CLS; BLIP-2: query 0, from an entry "
            "embedded with --queries reference; C2L: the 128-d head output, L2-normalised; the others as auto)",
            cite={"fmcache": "one rule for every model",
                  "fairmedfm": "models/blip.py:32, models/blip2.py:32, models/c2l.py:167-173",
                  "paper": _SILENT},
        ),
        Switch(
            name="templates",
            stage="probe",
            values=("mean", "first"),
            value={"fmcache": "mean", "fairmedfm": "first", "paper": "first"},
            meaning="a class's text prototype for zeroshot and clip_adapt: mean of every template, or the first "
            "template only (the reference code's one template per dataset)",
            cite={"fmcache": "averaging prompts is the usual CLIP ensembling",
                  "fairmedfm": "utils/tokenizer.py:7-9 with the text_template of configs/datasets/*.json",
                  "paper": _SILENT},
        ),
        Switch(
            name="query_pool",
            stage="probe",
            values=("mean", "max"),
            value={"fmcache": "mean", "fairmedfm": "max", "paper": "max"},
            meaning="text heads on a multi-query model (BLIP-2): mean = the cached mean of the query projections; "
            "max = a class's score is the maximum over the queries of their similarity (needs an entry "
            "embedded with --queries reference)",
            cite={"fmcache": "one vector per image keeps every head on the same feature",
                  "fairmedfm": "models/blip2.py:20 (torch.max over the query axis)",
                  "paper": _SILENT},
        ),
        Switch(
            name="logit_scale",
            stage="probe",
            values=("model", "reference"),
            value={"fmcache": "model", "fairmedfm": "reference", "paper": "reference"},
            meaning="zero-shot logit scale: model = the model's stored scale (100 where a release stores none, "
            "as for BLIP and BLIP-2, whose learned temperature the transformers releases drop); reference = "
            "the reference code's factors on top (PubMedCLIP x exp(0.01) / exp(0.07) = 0.942)",
            cite={"fmcache": "the scale the model was trained with",
                  "fairmedfm": "models/pubmed_clip.py:24",
                  "paper": _SILENT},
        ),
        Switch(
            name="threshold",
            stage="probe",
            open=True,
            values=("val", "best_f1_on_test"),
            value={"fmcache": "val", "fairmedfm": "best_f1_on_test", "paper": "best_f1_on_test"},
            meaning="decision threshold of the thresholded metrics: val = Youden's J on the validation split (or "
            "a number, val:f1, val:sensitivity:0.9); best_f1_on_test = the best-F1 threshold of the test set "
            "itself",
            cite={"fmcache": "a threshold fitted on the test set flatters every thresholded metric",
                  "fairmedfm": "utils/metrics.py:12-22, applied at utils/metrics.py:102",
                  "paper": _SILENT},
        ),
        Switch(
            name="convention",
            stage="probe",
            values=("paper", "fairmedfm", "fairlearn"),
            value={"fmcache": "paper", "fairmedfm": "fairmedfm", "paper": "paper"},
            meaning="metric formulas: paper = the appendix formulas; fairmedfm = the reference code's (EqOdds "
            "1 - mean(dTPR, dTNR), ECE bins over the scores' range); fairlearn = fairlearn's",
            cite={"fmcache": "the formulas the paper states",
                  "fairmedfm": "utils/metrics.py:61-98 (ECE), utils/metrics.py:149 (EqOdds)",
                  "paper": "the paper's appendix (metric definitions)"},
        ),
    ]
}

# what the reference code does that no switch reproduces: said wherever the switches are listed
NOT_REPRODUCED = (
    "linear probe trained with SGD without momentum on class-weighted cross-entropy, last epoch kept "
    "(trainers/base.py:68-71, datasets/base.py:89-95); fmcache trains AdamW on plain cross-entropy and "
    "selects on validation",
    "splits by image or scan id, age / race test sets subsampled without a seed (main.py:44-45, "
    "MIMIC_CXR.ipynb:3035-3036); fmcache's are patient-level and seeded",
    "COVID-CT-MD's age groups split at > 60 (CovidCT.ipynb:1456-1460) where fmcache's threshold is 50, and "
    "age test sets balanced at > 60 but scored at >= 60 (MIMIC_CXR.ipynb:3027-3030)",
    "unknown sex or race counted in a group (anything not 'M' is female; 'UNKNOWN' race is non-white); "
    "fmcache keeps them unknown",
)

# the reference code's per-dataset normalisation (preprocess=reference); datasets it does not
# name get CLIP's statistics, as there
CXR_STATS = ((0.5056,) * 3, (0.252,) * 3)
REFERENCE_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "chexpert": CXR_STATS,
    "mimic_cxr": CXR_STATS,
    "covid_ct_md": CXR_STATS,
    "adni": CXR_STATS,
    "gf3300": ((0.2756,) * 3, (0.1708,) * 3),
}

# feature=reference: (cached kind, L2-normalise) of the reference code's probe per model key;
# models not named take the auto rule
REFERENCE_FEATURE: dict[str, tuple[str, bool]] = {
    "blip": ("image", False),
    "blip2": ("image", False),
    "c2l": ("image_proj", True),
}

# slices=reference: the reference code's slice count per 3D dataset
REFERENCE_SLICES: dict[str, int] = {"covid_ct_md": 34, "adni": 24}

# logit_scale=reference: factors the reference code multiplies the model's logit scale by
REFERENCE_LOGIT_FACTOR: dict[str, float] = {"pubmedclip": math.exp(0.01) / math.exp(0.07)}


def check_protocol(name: str) -> str:
    if name not in PROTOCOLS:
        raise UnknownNameError(f"unknown protocol {name!r}{did_you_mean(name, PROTOCOLS)}: use one of {', '.join(PROTOCOLS)}")
    return name


def resolve(protocol: str, stage: str, chosen: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Every switch of ``stage`` under ``protocol``, with the explicitly ``chosen`` ones
    (not None) taking precedence; unknown names or values are refused."""
    check_protocol(protocol)
    chosen = {k: v for k, v in (chosen or {}).items() if v is not None}
    out = {}
    for name, s in SWITCHES.items():
        if s.stage != stage:
            continue
        value = str(chosen.pop(name, s.value[protocol]))
        if value not in s.values and not s.open:
            raise FmcacheError(f"{name} {value!r}: choose one of {', '.join(s.values)}")
        out[name] = value
    if chosen:
        raise UnknownNameError(f"no {stage} switch {', '.join(chosen)} (they are: {', '.join(out)})")
    return out


def entry_suffix(embed: Mapping[str, str], multi_query: bool) -> str:
    """The suffix a model's cache entry carries for non-default embed switches, e.g.
    ``+pre-reference``; ``queries`` only counts for a model with several query outputs."""
    tags = []
    if embed.get("preprocess", "model") != "model":
        tags.append(f"pre-{embed['preprocess']}")
    if multi_query and embed.get("queries", "mean") != "mean":
        tags.append(f"queries-{embed['queries']}")
    return "".join("+" + t for t in tags)


def dataset_options(protocol: str, dataset: str, attributes: list[str], options: Mapping[str, str]) -> dict[str, str]:
    """The dataset options ``protocol``'s data switches set on ``dataset``; an option the user
    gave (``options``) wins. ``attributes`` name the dataset's sensitive attributes in order
    (a balanced test split balances the first)."""
    out = dict(options)
    for name, value in resolve(protocol, "data").items():
        if value == SWITCHES[name].value["fmcache"]:
            continue  # fmcache's values are the adapters' defaults: naming them would change the entry's identity
        if name == "split":
            if attributes:
                out.setdefault("split", f"balanced-test:{attributes[0]}")
            continue
        opt = SWITCHES[name].option_for(dataset, value)
        if opt is not None:
            out.setdefault(*opt)
    return out


def data_switches(dataset: str, options: Mapping[str, str]) -> dict[str, str]:
    """The data switches' values that a dataset's recorded options amount to ("n/a" where a
    switch does not touch the dataset)."""
    out = {}
    for name, s in SWITCHES.items():
        if s.stage != "data":
            continue
        if name == "split":
            out[name] = "balanced-test" if str(options.get("split", "")).startswith("balanced-test") else "patient"
        elif dataset in s.options:
            opt, by_value = s.options[dataset]
            default = by_value[s.value["fmcache"]]
            given = str(options.get(opt, default))
            out[name] = next((v for v, o in by_value.items() if o == given), f"{opt}={given}")
        else:
            out[name] = "n/a"
    return out


def reference_values(dataset: str) -> dict[str, str]:
    """The reference code's value of every switch for a dataset (by adapter key): as in the
    table, with the slice count spelt out."""
    out = {name: s.value["fairmedfm"] for name, s in SWITCHES.items()}
    out["slices"] = str(REFERENCE_SLICES.get(dataset, 32))
    return out


def differences(values: Mapping[str, str], reference: Mapping[str, str]) -> list[str]:
    """How a run whose switches are ``values`` differs from the ``reference`` values
    (:func:`reference_values`), one line per switch; n/a switches do not count."""
    lines = []
    for name, value in values.items():
        ref = reference.get(name)
        if name not in SWITCHES or value == "n/a" or value == ref:
            continue
        why = SWITCHES[name].cite["fmcache"] if value == SWITCHES[name].value["fmcache"] else "chosen"
        lines.append(f"{name}: {value} (reference code: {ref}; {why})")
    return lines
