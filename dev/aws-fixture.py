#!/usr/bin/env python3
"""Test fixtures and checks for circleci_nomad_client_launch_config, with boto3 against
the moto server dev/services-up.sh starts. Independent of the provider's own AWS code, so
tests can check what the provider did with a second client.

Every command prints one JSON object on stdout.

  setup --name N --kind lc|lt --user-data-file F [--instances 2]
      VPC, subnet, security group, an enterprise-setup-like launch configuration (or
      launch template) with F as user_data, and an Auto Scaling group N with the
      instances, all named after N.
  group --name N            the group: launch configuration/template, instances
  lc --name N               a launch configuration, user_data decoded ("exists": false if none)
  lcs                       names of all launch configurations
  lt --id T --version V     a launch template version, user_data decoded
  point --name N --lc L     point group N at launch configuration L (to make drift)
  delete-lc --name L        delete a launch configuration
"""
import argparse
import base64
import json
import os
import sys

import boto3

ENDPOINT = os.environ.get("CIRCLECI_TEST_AWS_ENDPOINT", "http://127.0.0.1:55000")
REGION = os.environ.get("AWS_REGION", "us-east-1")


def client(name):
    return boto3.client(
        name,
        region_name=REGION,
        endpoint_url=ENDPOINT,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )


def setup(a):
    ec2, asg = client("ec2"), client("autoscaling")
    user_data = open(a.user_data_file, "rb").read()
    b64 = base64.b64encode(user_data).decode()
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=REGION + "a")[
        "Subnet"
    ]["SubnetId"]
    sg = ec2.create_security_group(GroupName=a.name + "-nomad", Description="nomad clients", VpcId=vpc)[
        "GroupId"
    ]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    out = {"group": a.name, "security_group": sg, "subnet": subnet, "image_id": ami}
    common = dict(MinSize=0, MaxSize=a.instances * 2, DesiredCapacity=a.instances, VPCZoneIdentifier=subnet)
    if a.kind == "lc":
        lc = a.name + "-original"
        asg.create_launch_configuration(
            LaunchConfigurationName=lc,
            ImageId=ami,
            InstanceType="m5.2xlarge",
            SecurityGroups=[sg],
            KeyName="circleci-ops",
            UserData=user_data.decode(),  # boto3 base64-encodes it for this call
            IamInstanceProfile="circleci-nomad-client",
            EbsOptimized=True,
            InstanceMonitoring={"Enabled": False},
            AssociatePublicIpAddress=False,
            PlacementTenancy="default",
            SpotPrice="0.25",
            MetadataOptions={"HttpTokens": "required", "HttpPutResponseHopLimit": 2, "HttpEndpoint": "enabled"},
            BlockDeviceMappings=[
                {"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100, "VolumeType": "gp3", "DeleteOnTermination": True}}
            ],
        )
        asg.create_auto_scaling_group(AutoScalingGroupName=a.name, LaunchConfigurationName=lc, **common)
        out["launch_configuration"] = lc
    else:
        lt = ec2.create_launch_template(
            LaunchTemplateName=a.name + "-template",
            LaunchTemplateData={
                "ImageId": ami,
                "InstanceType": "m5.2xlarge",
                "KeyName": "circleci-ops",
                "UserData": b64,  # but not for launch templates
                "SecurityGroupIds": [sg],
                "IamInstanceProfile": {"Name": "circleci-nomad-client"},
                "EbsOptimized": True,
                "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
                "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": 100, "VolumeType": "gp3"}}],
                "TagSpecifications": [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "nomad-client"}]}],
            },
        )["LaunchTemplate"]
        asg.create_auto_scaling_group(
            AutoScalingGroupName=a.name,
            LaunchTemplate={"LaunchTemplateId": lt["LaunchTemplateId"], "Version": "$Latest"},
            **common,
        )
        out["template_id"] = lt["LaunchTemplateId"]
    out.update(group_info(a.name))
    return out


def group_info(name):
    gs = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not gs:
        return {"exists": False}
    g = gs[0]
    return {
        "exists": True,
        "launch_configuration": g.get("LaunchConfigurationName"),
        "launch_template": g.get("LaunchTemplate"),
        "desired": g["DesiredCapacity"],
        "instances": [{"id": i["InstanceId"], "state": i["LifecycleState"]} for i in g["Instances"]],
    }


def lc_info(name):
    lcs = client("autoscaling").describe_launch_configurations(LaunchConfigurationNames=[name])[
        "LaunchConfigurations"
    ]
    if not lcs:
        return {"exists": False}
    lc = lcs[0]
    user_data = base64.b64decode(lc.pop("UserData", "") or "").decode()
    for k in ("CreatedTime", "LaunchConfigurationARN", "LaunchConfigurationName"):
        lc.pop(k, None)
    return {"exists": True, "fields": lc, "user_data": user_data}


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--name", required=True)
    s.add_argument("--kind", choices=["lc", "lt"], default="lc")
    s.add_argument("--user-data-file", required=True)
    s.add_argument("--instances", type=int, default=2)
    sub.add_parser("group").add_argument("--name", required=True)
    sub.add_parser("lc").add_argument("--name", required=True)
    sub.add_parser("lcs")
    s = sub.add_parser("lt")
    s.add_argument("--id", required=True)
    s.add_argument("--version", required=True)
    s = sub.add_parser("point")
    s.add_argument("--name", required=True)
    s.add_argument("--lc", required=True)
    sub.add_parser("delete-lc").add_argument("--name", required=True)
    a = p.parse_args()
    if a.cmd == "setup":
        out = setup(a)
    elif a.cmd == "group":
        out = group_info(a.name)
    elif a.cmd == "lc":
        out = lc_info(a.name)
    elif a.cmd == "lcs":
        # Every page: a long-lived moto (make demo, repeated runs) holds more than one.
        pages = client("autoscaling").get_paginator("describe_launch_configurations").paginate()
        out = {"names": [lc["LaunchConfigurationName"] for p in pages for lc in p["LaunchConfigurations"]]}
    elif a.cmd == "lt":
        v = client("ec2").describe_launch_template_versions(LaunchTemplateId=a.id, Versions=[a.version])[
            "LaunchTemplateVersions"
        ][0]
        data = v["LaunchTemplateData"]
        user_data = base64.b64decode(data.pop("UserData", "") or "").decode()
        out = {"version": v["VersionNumber"], "data": data, "user_data": user_data}
    elif a.cmd == "point":
        client("autoscaling").update_auto_scaling_group(AutoScalingGroupName=a.name, LaunchConfigurationName=a.lc)
        out = group_info(a.name)
    elif a.cmd == "delete-lc":
        client("autoscaling").delete_launch_configuration(LaunchConfigurationName=a.name)
        out = {"deleted": a.name}
    json.dump(out, sys.stdout, default=str)
    print()


if __name__ == "__main__":
    main()
