"""tsloss_harness.testbed.problem_templates: each template alone gives a question and a worked answer."""

import random

from tsloss_harness.testbed import problem_templates, problems


def test_every_template_writes_a_question_and_worked_steps():
    assert len(problem_templates.TEMPLATES) == 15
    for template in problem_templates.TEMPLATES:
        for seed in range(20):
            rng = random.Random(seed)
            solution = problems._Solution(rng)
            question = template(rng, solution, rng.choice(problem_templates.NAMES))
            assert question.endswith("?"), (template.name, question)
            assert len(solution.lines) >= 2 and solution.answer().endswith(f"#### {solution.result}")
