# schemathesis hooks for run_fuzz.sh (loaded through SCHEMATHESIS_HOOKS=<this file>).
import schemathesis

# POST /images/load (and /plugins/create) accept only application/x-tar, for which
# schemathesis has no serializer ("Serialization not possible"): send the generated
# bytes raw, as for application/octet-stream. Garbage archives are the point.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")

# Operations that stream until the client hangs up unless told otherwise: every
# request gets the parameter that makes it finish, the others stay fuzzed.
FINITE = {
    "/containers/{id}/logs": {"follow": "false"},
    "/containers/{id}/stats": {"stream": "false"},
    "/events": {"until": "1"},  # a time in the past: replay what is stored, then end
}


@schemathesis.hook
def before_call(context, case, kwargs):
    force = FINITE.get(case.operation.path)
    if force:
        case.query = {**(case.query or {}), **force}
