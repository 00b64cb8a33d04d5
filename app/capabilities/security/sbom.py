"""A software bill of materials of the installed environment, as CycloneDX 1.6 JSON.

Built with ``cyclonedx-python-lib`` (the CycloneDX project's own library, which writes and
validates every schema version) rather than by hand, so the document follows the schema as it
evolves. Version 1.6 is the newest that the common consumers (Dependency-Track, Grype, Trivy)
read. The BOM describes Renum as the application (``metadata.component``) and every other
installed distribution as a library with its package URL (``pkg:pypi/<name>@<version>``),
its licence where the metadata declares one, and the dependency graph read from each
distribution's requirements. Nothing is fetched: everything comes from the installed
distributions' metadata.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from app import __version__

DISTRIBUTION = "renum"
SPEC_VERSION = "1.6"
MAX_LICENSE_NAME = 100


def purl_name(name: str) -> str:
    """The package URL spelling of a PyPI name: lower case, ``_`` as ``-`` (purl spec)."""
    return name.lower().replace("_", "-")


def _license(metadata: importlib.metadata.PackageMetadata) -> str | None:
    """The SPDX expression (``License-Expression``, PEP 639), else a short ``License`` field
    (a long one is the licence's text, not its name)."""
    expression = (metadata.get_all("License-Expression") or [""])[0]
    if expression and str(expression).strip():
        return str(expression).strip()
    declared = str((metadata.get_all("License") or [""])[0] or "").strip()
    if not declared or "\n" in declared or len(declared) > MAX_LICENSE_NAME:
        return None
    return None if declared.upper() == "UNKNOWN" else declared


def _requirements(requires: Iterable[str] | None) -> set[str]:
    """The normalised names a distribution needs in this environment (no extras)."""
    names: set[str] = set()
    for line in requires or []:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.add(canonicalize_name(requirement.name))
    return names


def sbom_json(distributions: Iterable[importlib.metadata.Distribution] | None = None) -> str:
    """The CycloneDX JSON of ``distributions`` (default: this environment's)."""
    try:
        from cyclonedx.contrib.license.factories import LicenseFactory
    except ImportError:  # releases before 11.12 have it only at its former place
        from cyclonedx.factory.license import LicenseFactory
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    licenses = LicenseFactory()
    bom = Bom()
    root = Component(
        type=ComponentType.APPLICATION,
        name=DISTRIBUTION,
        version=__version__,
        bom_ref=f"{DISTRIBUTION}@{__version__}",
        description="Renum: a backend for running teams of AI agents.",
    )
    bom.metadata.component = root
    components: dict[str, Component] = {}
    needs: dict[str, set[str]] = {}
    for distribution in distributions or importlib.metadata.distributions():
        metadata = distribution.metadata
        name = str(metadata["Name"] or "") if metadata else ""
        key = canonicalize_name(name) if name else ""
        if not key or key in needs:
            continue  # nameless, or shadowed by an earlier one on the path
        needs[key] = _requirements(distribution.requires)
        if key == DISTRIBUTION:
            continue  # the application itself: metadata.component
        purl = PackageURL(type="pypi", name=purl_name(name), version=distribution.version)
        found = _license(metadata)
        components[key] = Component(
            type=ComponentType.LIBRARY,
            name=name,
            version=distribution.version,
            purl=purl,
            bom_ref=purl.to_string(),
            licenses=[licenses.make_from_string(found)] if found else [],
        )
    for component in components.values():
        bom.components.add(component)
    if DISTRIBUTION not in needs:  # run from a source tree: the application needs the tops
        needed = set().union(*needs.values()) if needs else set()
        needs[DISTRIBUTION] = set(components) - needed
    for key, component in [(DISTRIBUTION, root), *components.items()]:
        wanted = [components[n] for n in sorted(needs.get(key, ())) if n in components]
        bom.register_dependency(component, wanted)
    return JsonV1Dot6(bom).output_as_string(indent=2)
