"""The pod webhook: inject the sidecar into opted-in pods that a PerfProfile selects."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import kopf

from perfpilot_operator.logic.injection import OPT_IN_LABEL, choose_profile, inject
from perfpilot_operator.logic.webhooks import POD_HANDLER_ID
from perfpilot_operator.runtime import Runtime


@kopf.on.mutate("pods", id=POD_HANDLER_ID, operations=["CREATE"],  # type: ignore[arg-type]  # kopf-kwargs
                labels={OPT_IN_LABEL: "true"}, persistent=True)
async def inject_sidecar(body: kopf.Body, patch: kopf.Patch, warnings: list[str], memo: Any,
                         profiles_by_namespace: kopf.Index[str, dict[str, Any]], dryrun: bool,
                         logger: kopf.Logger, **_: Any) -> None:
    rt: Runtime = memo.runtime
    namespace = body.get("metadata", {}).get("namespace", "")
    labels = dict(body.get("metadata", {}).get("labels") or {})
    profiles = list(profiles_by_namespace.get(namespace, []))
    profile, notes = choose_profile(profiles, labels)
    if profile is None and rt.kube is not None:
        # `kubectl apply -f profile.yaml -f deployment.yaml` races the index's watch: ask the
        # API server before admitting an opted-in pod without its sidecar.
        try:
            profiles = await rt.kube.list_profiles(namespace)
        except Exception as e:  # noqa: BLE001 - the index answer stands; say why
            logger.warning(f"live PerfProfile lookup in {namespace!r} failed: {e}")
        else:
            profile, notes = choose_profile(profiles, labels)
    warnings.extend(notes)
    if profile is None:
        warnings.append(f"perfpilot: this pod opted in ({OPT_IN_LABEL}=true) but no PerfProfile "
                        f"in namespace {namespace!r} selects it; admitted without a sidecar")
        return
    # The pod receives the CA's public certificate(s) only, in its own annotation.
    tmpl = replace(rt.settings.sidecar, native_sidecar=rt.native_sidecar, ca_bundle=rt.ca_bundle.decode())
    result = inject(dict(body), profile, tmpl)
    warnings.extend(f"perfpilot: {w}" for w in result.warnings)
    for path, value in result.changes.items():
        section, key = path.split(".", 1)
        if isinstance(value, dict) and section == "metadata":
            patch.setdefault(section, {}).setdefault(key, {}).update(value)
        else:
            patch.setdefault(section, {})[key] = value
