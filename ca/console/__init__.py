"""The web console (issue 11 item 5; docs/console.md): server-rendered pages on the admin API for officers,
operators and auditors, behind the admin API's own authentication and route-by-role matrix.

* :mod:`ca.console.session`: the session cookie (a pasted OIDC token, read by :mod:`ca.admin_guard` like a
  bearer header) and the CSRF tokens every console POST carries;
* :mod:`ca.console.render`: Jinja2 templates (autoescaped) and the security headers of every page;
* :mod:`ca.console.pages`: login, logout and the read-only pages;
* :mod:`ca.console.actions`: the officer's actions, each shown as a dry run before a confirming POST.

Nothing is loaded from elsewhere: no CDN, no JavaScript; one small stylesheet served from this package.
"""
