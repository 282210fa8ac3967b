"""JUnit XML for CI dashboards: a test suite per checkpoint, a test case per check group."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ckptkit.core.findings import Report
from ckptkit.core.names import printable  # also keeps out the control characters XML 1.0 cannot hold


def junit_xml(report: Report) -> bytes:
    """The report as JUnit XML: failing findings become ``<failure>``, the rest ``<system-out>``."""
    root = ET.Element("testsuites", name="ckptkit verify")
    total = failed = 0
    for target in report.targets:
        suite = ET.SubElement(root, "testsuite", name=printable(target.path))
        suite_failed = 0
        for group in target.groups:
            found = [f for f in target.findings if f.group == group]
            failing = [f for f in found if report.failing(f)]
            case = ET.SubElement(suite, "testcase", classname=printable(target.path), name=group)
            lines = [f"{f.severity} {f.check} {f.file}: {f.message}" for f in found]
            if failing:
                first = failing[0]
                failure = ET.SubElement(
                    case, "failure", type=first.check, message=printable(f"{len(failing)} finding(s); {first.message}")
                )
                failure.text = "\n".join(printable(line) for line in lines)
                suite_failed += 1
            elif lines:
                ET.SubElement(case, "system-out").text = "\n".join(printable(line) for line in lines)
        suite.set("tests", str(len(target.groups)))
        suite.set("failures", str(suite_failed))
        suite.set("errors", "0")
        suite.set("skipped", "0")
        total += len(target.groups)
        failed += suite_failed
    root.set("tests", str(total))
    root.set("failures", str(failed))
    root.set("errors", "0")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
