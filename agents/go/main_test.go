package main

import (
	"encoding/json"
	"os"
	"strconv"
	"testing"
)

// TestFatesHashAsBrokerbench checks unitHash and the group seeds against
// ../fate-vectors.json, which brokerbench's own unit test checks too.
func TestFatesHashAsBrokerbench(t *testing.T) {
	raw, err := os.ReadFile("../fate-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Seeds []struct {
			Group string `json:"group"`
			Seed  string `json:"seed"`
		} `json:"seeds"`
		UnitHash []struct {
			Seed     string  `json:"seed"`
			Producer uint32  `json:"producer"`
			Seq      string  `json:"seq"`
			U        float64 `json:"u"`
		} `json:"unit_hash"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	number := func(s string) uint64 {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, s := range v.Seeds {
		if got := groupSeed(s.Group); got != number(s.Seed) {
			t.Errorf("seed of %q: %d, want %s", s.Group, got, s.Seed)
		}
	}
	for _, h := range v.UnitHash {
		if got := unitHash(number(h.Seed), h.Producer, number(h.Seq)); got != h.U {
			t.Errorf("unitHash(%s, %d, %s) = %v, want %v", h.Seed, h.Producer, h.Seq, got, h.U)
		}
	}
}

func TestDecodeRefusesWrongTypesAndMissingFields(t *testing.T) {
	good := `{"version":"v1","order_id":"ord-1","user_id":"user-2","total":12.5,"timestamp":"t","trace_id":"x","bench":{"run":1,"producer":0,"seq":3,"key":2,"intended_ns":5,"sent_ns":6},"pad":"xx"}`
	if _, err := Decode([]byte(good)); err != nil {
		t.Fatalf("a v1 event: %v", err)
	}
	added := `{"version":"v1","order_id":"ord-1","user_id":"user-2","total":12.5,"currency":"EUR","timestamp":"t","trace_id":"x","bench":{"run":1,"producer":0,"seq":3,"key":2,"intended_ns":5,"sent_ns":6}}`
	if _, err := Decode([]byte(added)); err != nil {
		t.Fatalf("an added field: %v", err)
	}
	for _, bad := range []string{
		`{"version":"v1","order_id":"ord-1","user_id":"user-2","total":"12.5","timestamp":"t","bench":{"run":1,"producer":0,"seq":3,"key":2,"intended_ns":5,"sent_ns":6}}`,
		`{"version":"v1","user_id":"user-2","total":12.5,"timestamp":"t","bench":{"run":1,"producer":0,"seq":3,"key":2,"intended_ns":5,"sent_ns":6}}`,
		`not json`,
	} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("decoded %s", bad)
		}
	}
}
