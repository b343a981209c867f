"""Provisioning of UE configuration documents: file formats (:mod:`.files`), ``msgin5g config``
(:mod:`.cli`)."""
