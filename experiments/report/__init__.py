"""The report: ``results.json`` and the HTML page, from the measurements the tests record.

* :mod:`.plugin` -- the pytest hooks (gathering, writing ``results.json``, the pytest-html page);
* :mod:`.records` -- :func:`~.records.record`, how a test hands a measurement to the report;
* :mod:`.document` -- the results document (``results.json``): runs, environment, references;
* :mod:`.page` -- the report's sections put together, before and after pytest-html's summary;
* :mod:`.sections` -- one module per section of the page; :mod:`.markup` and :mod:`.names`
  are the HTML building blocks and the wording they share;
* :mod:`.tests_table` -- pytest-html's own test table: hidden behind a checkbox, logs cut down;
* :mod:`.rerender` -- the page again from a saved ``results.json``
  (``python -m experiments.report.rerender reports/results.json -o /tmp/report.html``).
"""
