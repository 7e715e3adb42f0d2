"""The eight findings of the knee phantom: names, prevalences and where each one acts."""
from __future__ import annotations

# Column order of findings.csv and dataset.json "findings".
FINDINGS = (
    "acl_tear",
    "pcl_tear",
    "medial_meniscus_tear",
    "lateral_meniscus_tear",
    "mcl_injury",
    "lcl_injury",
    "patellar_dislocation",
    "joint_effusion",
)

# Probability that a sampled knee has the finding. Each finding is drawn independently, so
# a knee can have none or several. The values are chosen to give every finding enough
# positives for a 24-case demo and do not follow clinical prevalences.
FINDING_PREVALENCE = {
    "acl_tear": 0.35,
    "pcl_tear": 0.25,
    "medial_meniscus_tear": 0.35,
    "lateral_meniscus_tear": 0.30,
    "mcl_injury": 0.30,
    "lcl_injury": 0.25,
    "patellar_dislocation": 0.25,
    "joint_effusion": 0.40,
}

# Image signs of each finding, written to dataset.json as "findings_signs".
FINDING_SIGNS = {
    "acl_tear": "The anterior cruciate ligament is interrupted over a quarter of its length; the gap "
                "is filled with fluid (bright on PD fat-suppressed and T2) and carries no acl label.",
    "pcl_tear": "The posterior cruciate ligament is interrupted over a quarter of its length; the gap "
                "is filled with fluid and carries no pcl label.",
    "medial_meniscus_tear": "A horizontal fluid-bright line, about 1.5 mm thick, runs through the posterior "
                            "horn and body of the medial meniscus; the meniscus label is unchanged.",
    "lateral_meniscus_tear": "The same horizontal fluid-bright line inside the lateral meniscus.",
    "mcl_injury": "The medial collateral ligament (an unlabelled band beside the medial condyle and "
                  "plateau) is 2.5 times thicker and oedema-bright instead of dark.",
    "lcl_injury": "The lateral collateral ligament (an unlabelled band from the lateral condyle to the "
                  "fibular head) is 2.5 times thicker and oedema-bright instead of dark.",
    "patellar_dislocation": "The patella, its cartilage and the tendon ends attached to it are shifted "
                            "about 20 mm laterally and 5 mm anteriorly and tilted by 25 degrees.",
    "joint_effusion": "The suprapatellar recess between the quadriceps tendon and the femur is distended "
                      "with fluid (about 7 mm deep instead of 2.5 mm, and taller and wider).",
}
