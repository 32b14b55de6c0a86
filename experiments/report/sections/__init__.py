"""The report's sections, one module each, in page order: :mod:`.answer` (the answer and the
contents), :mod:`.design`, :mod:`.studies`, :mod:`.selected`, :mod:`.verification`,
:mod:`.recipes`, :mod:`.benchmarks`, :mod:`.backward`, :mod:`.provenance`.  Each turns
(part of) the results document into HTML; :mod:`experiments.report.page` puts them together."""
