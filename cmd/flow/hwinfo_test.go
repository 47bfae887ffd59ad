package main

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestHwinfo(t *testing.T) {
	code, out, stderr := flow(t, "hwinfo", "--profile", "i5-10210u-sm61")
	if code != exitOK || !strings.Contains(out, "4 physical, 8 threads") || !strings.Contains(out, "SM 6.1") || !strings.Contains(out, `stage "prefetch" lookahead`) {
		t.Fatalf("hwinfo --profile: exit %d\n%s%s", code, out, stderr)
	}
	code, out, stderr = flow(t, "hwinfo", "--json", "--model", "qwen3-vl-2b")
	var got struct {
		Hardware struct {
			Source string `json:"source"`
			CPU    struct {
				Threads int `json:"threads"`
			} `json:"cpu"`
		} `json:"hardware"`
		Settings struct {
			BlockTokens int `json:"block_tokens"`
			Reasons     []struct {
				Reason string `json:"reason"`
			} `json:"reasons"`
		} `json:"settings"`
	}
	if code != exitOK || json.Unmarshal([]byte(out), &got) != nil || got.Hardware.Source != "discovered" || got.Hardware.CPU.Threads < 1 ||
		got.Settings.BlockTokens < 16 || len(got.Settings.Reasons) == 0 || got.Settings.Reasons[0].Reason == "" {
		t.Fatalf("hwinfo --json: exit %d, %+v\n%s%s", code, got, out, stderr)
	}
	for _, args := range [][]string{{"hwinfo", "--profile", "cray-1"}, {"hwinfo", "--model", "gpt-5"}, {"hwinfo", "extra"}} {
		if code, _, stderr := flow(t, args...); code != exitUsage || stderr == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 with a message", args, code, stderr)
		}
	}
}
