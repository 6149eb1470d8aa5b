"""The permission policy engine: pure access decisions with reasons; no I/O.

:func:`decide` answers "may this client call this service (with this method and path)?" from global
configuration's access rights and the provider's :class:`LocalPolicy`, and explains the answer in a
:class:`Decision`.  Semantics, precedence and the path pattern grammar are in ``docs/policies.md``.
"""

from policies.engine import Decision, RightsIndex, allowed_services, decide, rights_index
from policies.local import LocalDeny, LocalGrant, LocalPolicy, Subject
from policies.paths import PathPattern, compile_pattern, path_problem

__all__ = [
    "Decision",
    "LocalDeny",
    "LocalGrant",
    "LocalPolicy",
    "PathPattern",
    "RightsIndex",
    "Subject",
    "allowed_services",
    "compile_pattern",
    "decide",
    "path_problem",
    "rights_index",
]
