"""``trustmesh-ca analyze`` (issue 11 item 4; docs/analyze.md): checks of the configuration and of the
datastore's live state, each a small function with a stable ID that reports findings with a severity and
the fix. Usage::

    state, problems = read_state(config, now, crls)          # ca.analysis.state: reads, never writes
    findings = run_checks(Context(config, now, state))       # ca.analysis.checks: errors first
    sys.exit(exit_code([*problems, *findings]))

The checks are grouped by what they read: :mod:`~ca.analysis.config_checks`,
:mod:`~ca.analysis.authority_checks` (authorities, upstream, CRLs), :mod:`~ca.analysis.registration_checks`
(entries, mappings, tokens, agents, records) and :mod:`~ca.analysis.federation_checks`.
"""
