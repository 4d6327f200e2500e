"""A verification report as JUnit XML, for CI systems that show test results (GitHub Actions, GitLab, Jenkins).

One test case per compared output (per layer, per input set) and per generation check; a failure carries the
numbers: max abs difference, the tolerance, the smallest atol that would pass, the module that computed it.
Coverage problems (a reference compared only in part) are one more failing case.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from hfport.verify.localise import describe


def _number(value: Any) -> str:
    return f"{value:.3e}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _output_case(entry: dict, tolerance: dict, classname: str, variant: str | None, family: Any) -> ET.Element:
    name = str(entry.get("name", "?"))
    set_name = str(entry.get("set", ""))
    case = ET.Element("testcase", classname=f"{classname}.{set_name}" if set_name else classname, name=name, time="0")
    if entry.get("passed"):
        return case
    module = describe(name, variant, family).get("module") or name
    atol = entry.get("atol", tolerance.get("atol"))
    message = (f"max abs diff {_number(entry.get('max_abs'))} > tolerance {_number(atol)}"
               + (f" + {tolerance['scale_rtol']:g}*max|ref|" if tolerance.get("scale_rtol") else "")
               + f" at module {module}")
    if entry.get("error"):
        message = f"{entry['error']} (module {module})"
    failure = ET.SubElement(case, "failure", message=message, type="NumericDivergence")
    details = {"output": name, "inputs": set_name, "module": module, "max_abs": entry.get("max_abs"),
               "mean_abs": entry.get("mean_abs"), "max_rel": entry.get("max_rel"), "atol": atol,
               "rtol": tolerance.get("rtol"), "scale_rtol": tolerance.get("scale_rtol"),
               "smallest_passing_atol": entry.get("min_atol_to_pass"), "cosine": entry.get("cosine"),
               "worst_index": entry.get("worst_index"), "error": entry.get("error")}
    failure.text = "\n".join(f"{k}: {v}" for k, v in details.items() if v is not None)
    return case


def _generation_case(entry: dict, classname: str) -> ET.Element:
    set_name = str(entry.get("set", ""))
    case = ET.Element("testcase", classname=f"{classname}.generation", name=f"{entry.get('name')} [{set_name}]",
                      time="0")
    if entry.get("exact"):
        return case
    if not entry.get("required", True):
        ET.SubElement(case, "skipped", message="beam search differs (informational; --check-beam makes it required)")
        return case
    failure = ET.SubElement(case, "failure", type="GenerationMismatch",
                            message=entry.get("error") or f"generated tokens differ from the reference "
                                                          f"(num_beams {entry.get('num_beams')})")
    failure.text = f"reference: {entry.get('reference')}\nconverted: {entry.get('converted')}"
    return case


def report_junit(report: dict[str, Any], variant: str | None = None) -> str:
    family = report.get("family")
    try:
        from hfport.family import get_family

        family_obj = get_family(family) if family else None
    except Exception:  # an unknown family still gets its XML, with trace names instead of modules
        family_obj = None
    classname = f"hfport.verify.{family or 'model'}"
    tolerance = report.get("tolerance") or {}
    cases = [_output_case(o, tolerance, classname, variant, family_obj) for o in report.get("outputs") or []]
    cases += [_generation_case(g, classname) for g in report.get("generation") or []]
    for problem in report.get("problems") or []:
        case = ET.Element("testcase", classname=f"{classname}.coverage", name="reference fully compared", time="0")
        ET.SubElement(case, "failure", type="Coverage", message=str(problem))
        cases.append(case)
    failures = sum(1 for c in cases if c.find("failure") is not None)
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    suite = ET.Element("testsuite", name=f"hfport verify {os.path.basename(str(report.get('model', '')))}",
                       tests=str(len(cases)), failures=str(failures), errors="0", skipped=str(skipped),
                       time=f"{report.get('seconds') or 0:.3f}")
    properties = ET.SubElement(suite, "properties")
    reference = report.get("reference") or {}
    for key, value in (("reference", reference.get("path")), ("reference_sha256", reference.get("sha256")),
                       ("tolerance_policy", tolerance.get("policy")), ("atol", tolerance.get("atol")),
                       ("passed", report.get("passed"))):
        if value is not None:
            ET.SubElement(properties, "property", name=key, value=str(value))
    suite.extend(cases)
    root = ET.Element("testsuites", tests=str(len(cases)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: dict[str, Any], path: str | Path, variant: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(report_junit(report, variant), encoding="utf-8")
    os.replace(partial, path)
    return path
