"""``doc_to_text`` of ``testbed_choice_native_offline``: the testbed's choice rows asked in the format the
skills testbed was pretrained on (one home: ``tsloss_harness.testbed.skills``)."""

from tsloss_harness.testbed.skills import native_choice_prompt as doc_to_text  # noqa: F401
