package main

import (
	"encoding/binary"
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

// TestDecodesAsEveryConsumer checks Decode and ReadBench against
// ../event-vectors.json, which every consumer is held to.
func TestDecodesAsEveryConsumer(t *testing.T) {
	raw, err := os.ReadFile("../event-vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Vectors []struct {
			Name    string `json:"name"`
			Payload string `json:"payload"`
			Decodes bool   `json:"decodes"`
			Bench   *struct {
				Run        uint64 `json:"run,string"`
				Producer   uint32 `json:"producer"`
				Seq        uint64 `json:"seq,string"`
				Key        uint64 `json:"key,string"`
				IntendedNs uint64 `json:"intended_ns,string"`
				SentNs     uint64 `json:"sent_ns,string"`
			} `json:"bench"`
		} `json:"vectors"`
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, c := range v.Vectors {
		e, err := Decode([]byte(c.Payload))
		if got := err == nil; got != c.Decodes {
			t.Errorf("%s: decodes %v (%v), want %v", c.Name, got, err, c.Decodes)
			continue
		}
		var want *Bench
		if c.Bench != nil {
			want = &Bench{Run: c.Bench.Run, Producer: c.Bench.Producer, Seq: c.Bench.Seq,
				Key: c.Bench.Key, IntendedNs: c.Bench.IntendedNs, SentNs: c.Bench.SentNs}
		}
		if c.Decodes {
			if want == nil || *e.Bench != *want {
				t.Errorf("%s: decoded the envelope %+v, want %+v", c.Name, e.Bench, want)
			}
			continue
		}
		got, err := ReadBench([]byte(c.Payload))
		switch {
		case want == nil && err == nil:
			t.Errorf("%s: read the envelope %+v, want none", c.Name, *got)
		case want != nil && err != nil:
			t.Errorf("%s: read no envelope (%v), want %+v", c.Name, err, *want)
		case want != nil && *got != *want:
			t.Errorf("%s: read the envelope %+v, want %+v", c.Name, *got, *want)
		}
	}
}

// TestRefusesOnlyThisRunsUndecodableEvents checks what Read makes of
// deliveries, and the receipts it writes for the foreign and unreadable.
func TestRefusesOnlyThisRunsUndecodableEvents(t *testing.T) {
	a := &Agent{cfg: Config{Run: 7}, receipts: &Receipts{ch: make(chan [48]byte, 4)}}
	event := func(run, total string) []byte {
		return []byte(`{"version":"v2","order_id":"o","user_id":"u","total":` + total +
			`,"timestamp":"t","trace_id":"x","bench":{"run":` + run +
			`,"producer":1,"seq":2,"key":3,"intended_ns":4,"sent_ns":5}}`)
	}
	if e, refused := a.Read(event("7", "1.5"), false, 9); e == nil || refused != nil {
		t.Errorf("an event of this run: %v, refused %v", e, refused)
	}
	e, refused := a.Read(event("7", `"1.5"`), true, 9)
	want := Bench{Run: 7, Producer: 1, Seq: 2, Key: 3, IntendedNs: 4, SentNs: 5}
	if e != nil || refused == nil || *refused != want {
		t.Fatalf("an undecodable event of this run: %v, refused %v", e, refused)
	}
	if len(a.receipts.ch) != 0 {
		t.Fatal("wrote a receipt before the caller refused it")
	}
	for _, payload := range [][]byte{event("8", `"1.5"`), []byte("hello")} {
		if e, refused := a.Read(payload, false, 9); e != nil || refused != nil {
			t.Errorf("%s: %v, refused %v", payload, e, refused)
		}
		if r := <-a.receipts.ch; r != receipt(kindDecodeFailed, actionProcessed, 0, false, nil, 9) {
			t.Errorf("%s: receipt %v", payload, r)
		}
	}
	if e, refused := a.Read(event("8", "1.5"), false, 9); e != nil || refused != nil {
		t.Errorf("an event of another run: %v, refused %v", e, refused)
	}
	if r := <-a.receipts.ch; r[0] != kindForeign || r[1] != 0 || r[2] != actionProcessed {
		t.Errorf("an event of another run: receipt %v", r)
	}
}

func TestRefusedReceiptCarriesTheEnvelope(t *testing.T) {
	a := &Agent{receipts: &Receipts{ch: make(chan [48]byte, 1)}}
	a.Refused(&Bench{Run: 7, Producer: 1, Seq: 2, Key: 3, IntendedNs: 4, SentNs: 5}, true, 9)
	r := <-a.receipts.ch
	if r[0] != kindDecodeFailed || r[1] != flagRedelivered|flagEnvelope || r[2] != actionRefused || r[3] != 0 {
		t.Errorf("header %v", r[:4])
	}
	le := binary.LittleEndian
	got := []uint64{uint64(le.Uint32(r[4:])), le.Uint64(r[8:]), le.Uint64(r[16:]), le.Uint64(r[24:]), le.Uint64(r[32:]), le.Uint64(r[40:])}
	for i, want := range []uint64{1, 2, 3, 4, 5, 9} {
		if got[i] != want {
			t.Errorf("field %d: %d, want %d", i, got[i], want)
		}
	}
}

func TestCurrencyIsV2sOptionalText(t *testing.T) {
	event := func(version, currency string) []byte {
		return []byte(`{"version":"` + version + `","order_id":"o","user_id":"u","total":1` + currency +
			`,"timestamp":"t","trace_id":"x","bench":{"run":1,"producer":1,"seq":2,"key":3,"intended_ns":4,"sent_ns":5}}`)
	}
	for _, c := range []struct {
		version, currency string
		decodes           bool
		want              string
	}{
		{"v2", `,"currency":"EUR"`, true, "EUR"},
		{"v2", ``, true, ""},
		{"v2", `,"currency":null`, true, ""},
		{"v2", `,"currency":5`, false, ""},
		{"v1", `,"currency":5`, true, ""},
		{"V1", ``, false, ""},
	} {
		e, err := Decode(event(c.version, c.currency))
		if (err == nil) != c.decodes || (err == nil && e.Currency != c.want) {
			t.Errorf("%s%s: %+v, %v", c.version, c.currency, e, err)
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
